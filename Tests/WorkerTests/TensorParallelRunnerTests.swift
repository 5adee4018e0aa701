import Engine
import Foundation
import Testing
@testable import Worker

/// A tiny f32 llama GGUF shaped for tensor-parallel splits (3 KV heads, head dim 32, FFN of 5 blocks).
private func tinyTPModel(seed: UInt64 = 11) throws -> GGUFFile {
    var state = seed &+ 0x9E37_79B9_7F4A_7C15
    func rnd() -> Float {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return Float(state >> 40) / Float(1 << 24) * 2 - 1
    }
    let hd = 32, nHead = 6, nKV = 3, dim = hd * nHead, ff = 160, vocab = 64
    var w = GGUFWriter()
    w.add("general.architecture", .string("llama"))
    w.add("llama.block_count", .uint32(2))
    w.add("llama.embedding_length", .uint32(UInt32(dim)))
    w.add("llama.feed_forward_length", .uint32(UInt32(ff)))
    w.add("llama.attention.head_count", .uint32(UInt32(nHead)))
    w.add("llama.attention.head_count_kv", .uint32(UInt32(nKV)))
    w.add("llama.context_length", .uint32(128))
    w.add("llama.attention.layer_norm_rms_epsilon", .float32(1e-5))
    w.add("llama.vocab_size", .uint32(UInt32(vocab)))
    func tensor(_ name: String, _ dims: [Int], base: Float = 0, scale: Float) {
        let v = (0..<dims.reduce(1, *)).map { _ in base + rnd() * scale }
        w.addTensor(name, type: .f32, dims: dims, data: v.withUnsafeBytes { Array($0) })
    }
    tensor("token_embd.weight", [dim, vocab], scale: 1)
    for l in 0..<2 {
        let p = "blk.\(l)."
        tensor(p + "attn_norm.weight", [dim], base: 1, scale: 0.1)
        tensor(p + "ffn_norm.weight", [dim], base: 1, scale: 0.1)
        for (n, rows, k) in [("attn_q", dim, dim), ("attn_k", hd * nKV, dim), ("attn_v", hd * nKV, dim), ("attn_output", dim, dim),
                             ("ffn_gate", ff, dim), ("ffn_up", ff, dim), ("ffn_down", dim, ff)] {
            tensor(p + n + ".weight", [k, rows], scale: 1.5 / Float(k).squareRoot())
        }
    }
    tensor("output_norm.weight", [dim], base: 1, scale: 0.1)
    return try GGUFFile(bytes: w.serialize())
}

private final class FollowerOutcome: @unchecked Sendable {   // written by the follower thread before `done`
    var error: (any Error)?
    var commands = 0
    let done = DispatchSemaphore(value: 0)
}

/// A group of `size` shards of `gguf`: rank 0's runner here, followers running on threads.
private final class TPHarness {
    let leader: TPLeaderRunner
    let outcomes: [FollowerOutcome]

    init(gguf: GGUFFile, size: Int, contextLength: Int, slots: Int, maxBatchTokens: Int, threads: Int = 1) throws {
        let config = try Model(gguf: gguf, options: ModelOptions(shard: ShardSpec(rank: 0, size: size))).config
        let owner = try TPGroup.create(size: size, config: config, maxBatchTokens: maxBatchTokens)
        func engine(_ r: Int) throws -> Engine {
            let g = try TPGroup(fd: owner.fd, byteCount: owner.byteCount, rank: r, size: size)
            g.spin = 256   // CI has 2 cores for all shards: sleep early rather than spin
            let m = try Model(gguf: gguf, options: ModelOptions(shard: ShardSpec(rank: r, size: size)))
            return try Engine(model: m, threads: threads, maxBatchTokens: maxBatchTokens, group: g)
        }
        var outcomes: [FollowerOutcome] = []
        for r in 1..<size {
            let e = try engine(r)
            let o = FollowerOutcome()
            let follower = TPFollower(engine: e, group: e.group!, contextLength: contextLength, slots: slots)
            let t = Thread {
                do { try follower.run() } catch { o.error = error }
                o.commands = follower.commandsExecuted
                o.done.signal()
            }
            t.stackSize = 8 << 20
            t.start()
            outcomes.append(o)
        }
        let e0 = try engine(0)
        leader = TPLeaderRunner(engine: e0, group: e0.group!, contextLength: contextLength, slots: slots)
        self.outcomes = outcomes
        _ = owner   // the memfd stays open while the handles map it (mappings outlive the fd)
    }

    /// Shuts the followers down; returns their errors (nil: returned normally).
    func finish() -> [(any Error)?] {
        leader.shutdown()
        for o in outcomes { o.done.wait() }
        return outcomes.map(\.error)
    }
}

/// Greedy generation of `steps` tokens for every prompt at once through a ModelRunner; also returns, per
/// prompt and step, the gap between the chosen token's logit and the runner-up (to explain differences).
private func greedy(_ runner: any ModelRunner, prompts: [[Int32]], steps: Int) throws -> (tokens: [[Int32]], gaps: [[Float]], first: [[Float]]) {
    var first = prompts.map { _ in [Float]() }
    let slots = prompts.map { _ in runner.acquireSequence() }
    let ids = try slots.map { try #require($0) }
    var tokens = prompts.map { _ in [Int32]() }, gaps = prompts.map { _ in [Float]() }
    var items = prompts.indices.map { StepItem(sequence: ids[$0], position: 0, tokens: prompts[$0][...]) }
    for _ in 0..<steps {
        try runner.forward(items) { i, row in
            var best = 0
            for j in 1..<row.count where row[j] > row[best] { best = j }
            var second = best == 0 ? 1 : 0
            for j in 0..<row.count where j != best && row[j] > row[second] { second = j }
            if tokens[i].isEmpty { first[i] = Array(row) }
            tokens[i].append(Int32(best))
            gaps[i].append(row[best] - row[second])
        }
        for i in items.indices {
            items[i].position += items[i].tokens.count
            items[i].tokens = [tokens[i].last!][...]
        }
    }
    for s in ids { runner.releaseSequence(s) }
    return (tokens, gaps, first)
}

@Suite(.serialized) struct TensorParallelRunnerTests {
    /// Leader + followers behind ModelRunner: same greedy tokens as the plain adapter on a tiny model
    /// (K = 2 uneven, K = 3), through truncate / release / re-acquire; followers return on shutdown.
    @Test(arguments: [2, 3])
    func leaderRunnerMatchesAdapter(size: Int) throws {
        let gguf = try tinyTPModel()
        let whole = ModelRunnerAdapter(engine: try Engine(model: Model(gguf: gguf), maxBatchTokens: 32), contextLength: 64, slots: 4)
        let h = try TPHarness(gguf: gguf, size: size, contextLength: 64, slots: 4, maxBatchTokens: 32)
        #expect(h.leader.kvBytesPerToken < whole.kvBytesPerToken)
        let prompts: [[Int32]] = [[1, 2, 3, 4, 5], [60, 61], [7, 7, 7, 9, 10, 11, 12]]
        let a = try greedy(whole, prompts: prompts, steps: 10)
        let b = try greedy(h.leader, prompts: prompts, steps: 10)
        #expect(a.tokens == b.tokens)
        // Truncate and continue (a session-cache hit) after reusing slots.
        let s = try #require(h.leader.acquireSequence())
        try h.leader.forward([StepItem(sequence: s, position: 0, tokens: [1, 2, 3, 4, 5])]) { _, _ in }
        h.leader.truncateSequence(s, to: 2)
        var fromTruncated: Int32 = -1
        try h.leader.forward([StepItem(sequence: s, position: 2, tokens: [3, 4, 5])]) { _, row in
            var best = 0
            for j in 1..<row.count where row[j] > row[best] { best = j }
            fromTruncated = Int32(best)
        }
        #expect(fromTruncated == a.tokens[0][0])
        // A step the leader refuses is never published (followers stay in step).
        #expect(throws: (any Error).self) { try h.leader.forward([StepItem(sequence: s, position: 99, tokens: [1])]) { _, _ in } }
        h.leader.releaseSequence(s)
        let errors = h.finish()
        #expect(errors.allSatisfy { $0 == nil }, "\(errors)")
        #expect(h.outcomes.allSatisfy { $0.commands > 10 })
        #expect(h.leader.failure == nil)
    }

    /// A leader whose follower dies: its forward throws (no hang) and so does every later one. A follower
    /// whose leader dies: run() throws.
    @Test func deadPeersFailRunners() throws {
        let gguf = try tinyTPModel()
        let config = try Model(gguf: gguf).config
        for deadRank in [1, 0] {
            let owner = try TPGroup.create(size: 2, config: config, maxBatchTokens: 8)
            let fake = Process()
            fake.executableURL = URL(fileURLWithPath: "/bin/sleep")
            fake.arguments = ["30"]
            try fake.run()
            owner.registerPeer(rank: deadRank, pid: fake.processIdentifier)
            let liveRank = 1 - deadRank
            let g = try TPGroup(fd: owner.fd, byteCount: owner.byteCount, rank: liveRank, size: 2)
            g.spin = 64
            let e = try Engine(model: Model(gguf: gguf, options: ModelOptions(shard: ShardSpec(rank: liveRank, size: 2))),
                               maxBatchTokens: 8, group: g)
            let pid = fake.processIdentifier
            DispatchQueue.global().asyncAfter(deadline: .now() + 0.2) { kill(pid, SIGKILL) }   // SIGTERM may be ignored
            let t0 = Date()
            if liveRank == 0 {
                let leader = TPLeaderRunner(engine: e, group: g, contextLength: 16, slots: 2)
                let s = try #require(leader.acquireSequence())
                #expect(throws: TPError.self) { try leader.forward([StepItem(sequence: s, position: 0, tokens: [1, 2])]) { _, _ in } }
                #expect(leader.failure != nil)
                #expect(throws: TPError.self) { try leader.forward([StepItem(sequence: s, position: 0, tokens: [1])]) { _, _ in } }
            } else {
                let follower = TPFollower(engine: e, group: g, contextLength: 16, slots: 2)
                #expect(throws: TPError.self) { try follower.run() }
            }
            #expect(Date().timeIntervalSince(t0) < 5, "rank \(liveRank) noticed the death late")
            fake.waitUntilExit()
        }
    }

    /// The fidelity prompts (../shared/fixtures/llama-cpp-goldens.json, chat prompt of its README): greedy
    /// 32 tokens with --tp 2 and --tp 3 equal --tp 1. Where a token differs, the first difference must be
    /// explained by a near-tie in the K = 1 logits (summation order differs between the splits).
    @Test func fidelityPromptsGreedyEqualAcrossTP() throws {
        let path = WorkerTestPaths.model
        try #require(FileManager.default.fileExists(atPath: path), "model file \(path) is missing: run tools/fetch-model")
        struct Goldens: Decodable { struct G: Decodable { var user: String }; var greedy: [G] }
        let goldens = try JSONDecoder().decode(Goldens.self, from: Data(contentsOf: WorkerTestPaths.goldens))
        #expect(goldens.greedy.count == 16)
        let gguf = try GGUFFile(path: path)
        let tok = try Tokenizer(config: TokenizerConfig(gguf: gguf))
        let prompts = goldens.greedy.map {
            tok.encode("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                       + "<|im_start|>user\n\($0.user)<|im_end|>\n<|im_start|>assistant\n", parseSpecial: true)
        }
        let T = 1024   // the 16 prompts prefill in one step
        let whole = ModelRunnerAdapter(engine: try Engine(model: Model(gguf: gguf), threads: 2, maxBatchTokens: T), contextLength: 128, slots: 16)
        let ref = try greedy(whole, prompts: prompts, steps: 32)
        for size in [2, 3] {
            let h = try TPHarness(gguf: gguf, size: size, contextLength: 128, slots: 16, maxBatchTokens: T)
            let got = try greedy(h.leader, prompts: prompts, steps: 32)
            // First step (same inputs): top-5 (of tp 1) logprob differences, as FidelityTests measures them.
            var diffs: [Float] = []
            for i in prompts.indices {
                let a = logSoftmax(ref.first[i]), b = logSoftmax(got.first[i])
                for j in a.indices.sorted(by: { a[$0] > a[$1] }).prefix(5) { diffs.append(abs(a[j] - b[j])) }
            }
            let mean = diffs.reduce(0, +) / Float(diffs.count)
            print("tp \(size): first-step top-5 logprob difference vs tp 1: max \(diffs.max() ?? 0), mean \(mean)")
            var same = 0
            for i in prompts.indices {
                // Compare up to the first end-of-generation token (llama.cpp stops there).
                let n = (ref.tokens[i].firstIndex { tok.isEndOfGeneration($0) }).map { $0 + 1 } ?? 32
                guard let d = (0..<n).first(where: { ref.tokens[i][$0] != got.tokens[i][$0] }) else { same += 1; continue }
                let gap = ref.gaps[i][d]
                print("tp \(size): '\(goldens.greedy[i].user)' differs at token \(d): \(ref.tokens[i][d]) (tp 1) vs \(got.tokens[i][d]), tp-1 top-2 logit gap \(gap)")
                // Float-order noise in this model moves logprobs by up to ~0.45 nats (FidelityTests' note on
                // one-ulp changes cascading through 8-bit activation roundings): a flip needs a near-tie.
                #expect(gap < 0.45, "tp \(size) prompt \(i): token \(d) differs with a logit gap of \(gap)")
            }
            print("tp \(size): \(same)/16 prompts with identical greedy tokens (32 each, up to end of generation)")
            #expect((diffs.max() ?? 1) <= 0.5 && mean <= 0.12, "tp \(size): top-5 logprob differences max \(diffs.max() ?? 1) mean \(mean)")
            let errors = h.finish()
            #expect(errors.allSatisfy { $0 == nil }, "\(errors)")
        }
    }
}

private func logSoftmax(_ l: [Float]) -> [Float] {
    let m = Double(l.max() ?? 0)
    var sum = 0.0
    for v in l { sum += exp(Double(v) - m) }
    let lse = m + log(sum)
    return l.map { Float(Double($0) - lse) }
}
