// Tensor-parallel shards behind the scheduler's ModelRunner interface.
//
// The leader (rank 0) is the ModelRunner the scheduler drives: every call is validated, published to the
// followers through the group's command area, and executed locally; the engines meet in the all-reduces
// inside the forward pass, so the shards run each step in lockstep. Only rank 0 holds the output head and
// produces logits. A follower (rank > 0) executes the leader's commands until shutdown.
//
// Sequence slots are the same on every shard (the command carries the slot), and so is every state
// change, in the same order. A follower whose state disagrees with a command (a slot that is not in the
// state the leader says, a failed allocation) aborts the group: the leader's next wait throws, and the
// group restarts as a unit.
import CSwitchyardSys
import Engine
import Wire

public final class TPLeaderRunner: ModelRunner {
    public let engine: Engine
    public let group: TPGroup
    public let vocabSize: Int
    public let contextLength: Int
    public let maxBatchTokens: Int
    public let kvBytesPerToken: Int
    let maxSlots: Int
    var slots: [SequenceID?]
    var batch: [BatchItem] = []
    /// Set when the group failed (a peer died, the group was aborted): every later forward throws it.
    public private(set) var failure: TPError?

    /// - Parameters: as ModelRunnerAdapter's; `engine` is rank 0's shard engine on `group` (rank 0).
    public init(engine: Engine, group: TPGroup, contextLength: Int, slots: Int) {
        self.engine = engine
        self.group = group
        vocabSize = engine.config.vocabSize
        self.contextLength = max(2, min(contextLength, engine.config.contextLength))
        maxBatchTokens = min(engine.maxBatchTokens, group.commandTokens, group.maxItems)
        kvBytesPerToken = engine.kvBytesPerToken
        maxSlots = max(1, slots)
        self.slots = [SequenceID?](repeating: nil, count: maxSlots)
        if group.rank != 0 || engine.group !== group {
            failure = .badArgument("the leader runner needs rank 0's engine on this group (rank \(group.rank))")
        }
    }

    private func fail(_ e: Error) {
        let t = e as? TPError ?? .aborted("\(e)")
        if failure == nil { failure = t }
        group.abort(reason: Int32(SY_TP_ABORT_DIVERGED))
    }

    public func acquireSequence() -> Int? {
        guard failure == nil, let i = slots.firstIndex(where: { $0 == nil }),
              let id = try? engine.createSequence(maxContext: contextLength) else { return nil }
        do { try group.publish(.create(slot: i, maxContext: contextLength)) } catch {
            engine.freeSequence(id)
            fail(error)
            return nil
        }
        slots[i] = id
        return i
    }

    public func releaseSequence(_ sequence: Int) {
        guard slots.indices.contains(sequence), let id = slots[sequence] else { return }
        engine.freeSequence(id)
        slots[sequence] = nil
        guard failure == nil else { return }
        do { try group.publish(.release(slot: sequence)) } catch { fail(error) }
    }

    public func truncateSequence(_ sequence: Int, to length: Int) {
        guard slots.indices.contains(sequence), let id = slots[sequence],
              let have = try? engine.length(of: id), length >= 0, length <= have else { return }
        do { try engine.truncate(id, to: length) } catch { fail(error); return }
        guard failure == nil else { return }
        do { try group.publish(.truncate(slot: sequence, length: length)) } catch { fail(error) }
    }

    public func forward(_ items: [StepItem], logits: (_ item: Int, _ row: UnsafeBufferPointer<Float>) -> Void) throws {
        if let failure { throw failure }
        // Validate here everything Engine.forward would reject, so that a published command never fails
        // on one shard only (followers treat a failing forward as divergence).
        batch.removeAll(keepingCapacity: true)
        var tokens = 0
        var seen = Set<Int>()
        for item in items {
            guard slots.indices.contains(item.sequence), let id = slots[item.sequence] else {
                throw RequestRejection(.internalError, "no KV sequence in slot \(item.sequence)")
            }
            guard seen.insert(item.sequence).inserted, !item.tokens.isEmpty else {
                throw RequestRejection(.internalError, "slot \(item.sequence) twice or without tokens in one step")
            }
            let length = try engine.length(of: id)
            guard item.position == length, length + item.tokens.count <= (try engine.maxContext(of: id)) else {
                throw RequestRejection(.internalError, "slot \(item.sequence): position \(item.position), length \(length), \(item.tokens.count) new tokens")
            }
            for t in item.tokens where t < 0 || Int(t) >= vocabSize {
                throw RequestRejection(.internalError, "token \(t) outside the vocabulary")
            }
            tokens += item.tokens.count
            batch.append(BatchItem(sequence: id, tokens: Array(item.tokens)))
        }
        guard !items.isEmpty, tokens <= group.commandTokens, items.count <= group.maxItems else {
            throw RequestRejection(.internalError, "step of \(items.count) items, \(tokens) tokens exceeds the group's \(group.commandTokens)")
        }
        do {
            try group.publishForward(itemCount: items.count) { i in (items[i].sequence, items[i].position, items[i].tokens) }
            let out = try engine.forward(batch, logits: .last)
            for i in items.indices { logits(i, out.logits(item: i)) }
        } catch {
            fail(error)
            throw failure ?? .aborted("\(error)")
        }
    }

    /// Tells the followers to return from `run()` (call once, when the worker stops).
    public func shutdown() {
        guard failure == nil else { return }
        do { try group.publish(.shutdown) } catch { fail(error) }
    }
}

/// Rank > 0 of a group: executes the leader's commands on its own shard engine.
/// @unchecked Sendable: it may be created on one thread and run on another; one thread drives it at a time.
public final class TPFollower: @unchecked Sendable {
    public let engine: Engine
    public let group: TPGroup
    let contextLength: Int
    var slots: [SequenceID?]
    var batch: [BatchItem] = []
    /// Commands executed (for tests and diagnostics).
    public private(set) var commandsExecuted = 0

    public init(engine: Engine, group: TPGroup, contextLength: Int, slots: Int) {
        self.engine = engine
        self.group = group
        self.contextLength = max(2, min(contextLength, engine.config.contextLength))
        self.slots = [SequenceID?](repeating: nil, count: max(1, slots))
    }

    /// Executes commands until the leader publishes shutdown (returns) or the group fails (throws: the
    /// leader or another shard died, the group was aborted, or this shard diverged — then it aborts the
    /// group first so that the others stop too).
    public func run() throws {
        guard group.rank > 0, engine.group === group else {
            throw TPError.badArgument("a follower needs a rank > 0 engine on this group (rank \(group.rank))")
        }
        while true {
            let command = try group.nextCommand()
            do {
                if try execute(command) { return }
            } catch {
                group.abort(reason: Int32(SY_TP_ABORT_DIVERGED))
                throw error as? TPError ?? .diverged("\(error)")
            }
            commandsExecuted += 1
        }
    }

    /// Returns true for shutdown.
    private func execute(_ command: TPCommand) throws -> Bool {
        switch command {
        case .shutdown:
            return true
        case .create(let slot, let maxContext):
            guard slots.indices.contains(slot), slots[slot] == nil else { throw TPError.diverged("create in slot \(slot)") }
            slots[slot] = try engine.createSequence(maxContext: maxContext)
        case .release(let slot):
            guard slots.indices.contains(slot), let id = slots[slot] else { throw TPError.diverged("release of slot \(slot)") }
            engine.freeSequence(id)
            slots[slot] = nil
        case .truncate(let slot, let length):
            guard slots.indices.contains(slot), let id = slots[slot] else { throw TPError.diverged("truncate of slot \(slot)") }
            try engine.truncate(id, to: length)
        case .forward(let items):
            batch.removeAll(keepingCapacity: true)
            for item in items {
                guard slots.indices.contains(item.slot), let id = slots[item.slot] else {
                    throw TPError.diverged("forward on slot \(item.slot)")
                }
                let length = try engine.length(of: id)
                guard length == item.position else {
                    throw TPError.diverged("slot \(item.slot) has \(length) tokens, the leader says \(item.position)")
                }
                batch.append(BatchItem(sequence: id, tokens: item.tokens))
            }
            _ = try engine.forward(batch, logits: .last)
        }
        return false
    }
}
