import CSwitchyardKernels
import Foundation
import Testing
@testable import Engine

/// A tiny llama GGUF shaped for tensor-parallel splits: 3 KV heads (K = 2 is uneven), head dim 32 (query-head
/// columns are whole 32-blocks), FFN of 5 blocks of 32 (uneven for K = 2 and 3). Matrix types cycle.
func tpTinyModel(types: [GGMLType], seed: UInt64 = 7, tiedOutput: Bool = false) -> GGUFWriter {
    tinyModel(types: types, seed: seed, tiedOutput: tiedOutput,
              shape: TinyShape(dim: 192, ff: 160, nHead: 6, nKV: 3, vocab: 64, nLayer: 2, weightScale: nil))
}

/// Runs `body(rank)` on `size` threads at once (shards must run concurrently: they meet in barriers) and
/// returns the results in rank order.
final class ShardResults<T>: @unchecked Sendable {   // each slot written by one thread, read after all joined
    var results: [Result<T, any Error>?]
    init(_ n: Int) { results = Array(repeating: nil, count: n) }
}

func onShardThreads<T: Sendable>(_ size: Int, _ body: @escaping @Sendable (Int) throws -> T) -> [Result<T, any Error>] {
    let box = ShardResults<T>(size)
    let done = DispatchSemaphore(value: 0)
    for r in 0..<size {
        let t = Thread {
            box.results[r] = Result(catching: { try body(r) })
            done.signal()
        }
        t.stackSize = 8 << 20
        t.start()
    }
    for _ in 0..<size { done.wait() }
    return box.results.map { $0! }
}

/// K shard engines of one model on one real TPGroup (shared memory), driven from threads.
final class ShardSet: @unchecked Sendable {
    // @unchecked: engine r is used only by the thread running rank r's body.
    let group: TPGroup
    let engines: [Engine]
    init(gguf: GGUFFile, size: Int, threads: Int = 1, maxBatchTokens: Int = 64) throws {
        let whole = try Model(gguf: gguf)
        let group = try TPGroup.create(size: size, config: whole.config, maxBatchTokens: maxBatchTokens)
        self.group = group
        engines = try (0..<size).map { r in
            let m = try Model(gguf: gguf, options: ModelOptions(shard: ShardSpec(rank: r, size: size)))
            let g = try TPGroup(fd: group.fd, byteCount: group.byteCount, rank: r, size: size)
            g.spin = 256   // shards share 2 cores in CI: sleep early rather than spin
            return try Engine(model: m, threads: threads, maxBatchTokens: maxBatchTokens, group: g)
        }
    }

    /// Every shard runs forward(items) on its engine; returns rank 0's logits rows (one per item).
    func forward(_ items: [(SequenceID, [Int32])], mode: LogitsMode = .last) throws -> [[Float]] {
        let results = onShardThreads(engines.count) { r in
            let out = try self.engines[r].forward(items.map { BatchItem(sequence: $0.0, tokens: $0.1) }, logits: mode)
            return r == 0 ? (0..<out.rowCount).map { Array(out.row($0)) } : []
        }
        for res in results { if case .failure(let e) = res { throw e } }
        return try results[0].get()
    }

    func createSequence(maxContext: Int) throws -> SequenceID {
        let ids = try engines.map { try $0.createSequence(maxContext: maxContext) }
        try #require(Set(ids).count == 1, "shards allocate the same sequence ids")
        return ids[0]
    }
}

@Suite struct ShardSplitTests {
    /// SmolLM2-135M's shapes: 9 query heads, 3 KV heads, FFN 1536.
    static func smolConfig() throws -> ModelConfig {
        var c = try ModelConfig(gguf: GGUFFile(bytes: tpTinyModel(types: [.q4_1]).serialize()))
        c.dim = 576; c.nHead = 9; c.nKVHead = 3; c.headDim = 64; c.ffnDim = 1536; c.nLayer = 30
        return c
    }

    @Test func splitsForOneTwoThreeShards() throws {
        let c = try Self.smolConfig()
        func layout(_ r: Int, _ k: Int) throws -> ShardLayout { try ShardLayout(config: c, shard: ShardSpec(rank: r, size: k)) }
        let whole = try layout(0, 1)
        #expect(whole.kvHeads == 0..<3 && whole.qHeads == 0..<9 && whole.ffnRows == 0..<1536)
        #expect(whole.localConfig(c) == c)
        // K = 2: KV heads 2 + 1, query heads follow (6 + 3), FFN 768 + 768.
        let a = try layout(0, 2), b = try layout(1, 2)
        #expect(a.kvHeads == 0..<2 && a.qHeads == 0..<6 && a.ffnRows == 0..<768)
        #expect(b.kvHeads == 2..<3 && b.qHeads == 6..<9 && b.ffnRows == 768..<1536)
        #expect(b.localConfig(c).kvDim == 64 && a.localConfig(c).kvDim == 128)
        // K = 3: one KV head, three query heads and 512 FFN rows each.
        for r in 0..<3 {
            let l = try layout(r, 3)
            #expect(l.kvHeads == r..<(r + 1) && l.qHeads == (3 * r)..<(3 * r + 3) && l.ffnRows == (512 * r)..<(512 * r + 512))
        }
        // Uneven FFN: 49 blocks of 32 over 2 shards -> 25 + 24 blocks.
        var odd = c
        odd.ffnDim = 49 * 32
        #expect(try ShardLayout(config: odd, shard: ShardSpec(rank: 0, size: 2)).ffnRows == 0..<800)
        #expect(try ShardLayout(config: odd, shard: ShardSpec(rank: 1, size: 2)).ffnRows == 800..<1568)
    }

    @Test func moreShardsThanKVHeadsIsAnError() throws {
        let c = try Self.smolConfig()
        do {
            _ = try ShardLayout(config: c, shard: ShardSpec(rank: 0, size: 4))
            Issue.record("K = 4 > 3 KV heads was accepted")
        } catch let e as ModelError {
            #expect("\(e)".contains("limit is 3"), "\(e)")
        }
        #expect(throws: ModelError.self) { try ShardSpec(rank: 2, size: 2) }
        #expect(throws: ModelError.self) { try ShardSpec(rank: 0, size: 0) }
        #expect(throws: ModelError.self) { try ShardSpec(rank: 0, size: 17) }
        // The model loader refuses it too, and an engine refuses a shard without a group.
        let gguf = try GGUFFile(bytes: tpTinyModel(types: [.q4_1]).serialize())
        #expect(throws: ModelError.self) { try Model(gguf: gguf, options: ModelOptions(shard: ShardSpec(rank: 0, size: 4))) }
        let shard = try Model(gguf: gguf, options: ModelOptions(shard: ShardSpec(rank: 1, size: 2)))
        #expect(throws: EngineError.self) { try Engine(model: shard) }
    }

    /// Column-range repack equals repacking a matrix made of those columns.
    @Test func columnRepackMatchesSubmatrix() throws {
        var rng = TestRNG(seed: 3)
        let rows = 32, k = 160, k0 = 64, k1 = 128
        for (blockBytes, chunk, type) in [(20, Int(SYK_R16_Q4_1_CHUNK), 0), (34, Int(SYK_R16_Q8_0_CHUNK), 1), (18, Int(SYK_R16_Q4_1_CHUNK), 2)] {
            let src = (0..<(rows * k / 32 * blockBytes)).map { _ in UInt8.random(in: 0...255, using: &rng) & (type == 0 || type == 2 ? 0xff : 0x7f) }
            var sub: [UInt8] = []
            for r in 0..<rows {
                let lo: Int = (r * k / 32 + k0 / 32) * blockBytes
                let hi: Int = (r * k / 32 + k1 / 32) * blockBytes
                sub += src[lo..<hi]
            }
            var a = [UInt8](repeating: 0, count: rows / 16 * (k1 - k0) / 32 * chunk), b = a
            switch type {
            case 0: syk_repack_q4_1_cols(src, &a, Int32(rows), Int32(k), Int32(k0), Int32(k1)); syk_repack_q4_1(sub, &b, Int32(rows), Int32(k1 - k0))
            case 1: syk_repack_q8_0_cols(src, &a, Int32(rows), Int32(k), Int32(k0), Int32(k1)); syk_repack_q8_0(sub, &b, Int32(rows), Int32(k1 - k0))
            default: syk_repack_q4_0_as_q4_1_cols(src, &a, Int32(rows), Int32(k), Int32(k0), Int32(k1)); syk_repack_q4_0_as_q4_1(sub, &b, Int32(rows), Int32(k1 - k0))
            }
            #expect(a == b, "type \(type)")
        }
    }
}

@Suite(.serialized) struct ShardedForwardTests {
    /// K = 2 and 3 shards on a tiny model give the same logits as the whole model up to summation order
    /// (and the same greedy tokens); each shard holds ~1/K of the layer weights and of the KV cache.
    @Test(arguments: [2, 3])
    func shardedMatchesWhole(size: Int) throws {
        let gguf = try GGUFFile(bytes: tpTinyModel(types: [.q4_1, .q8_0, .f16]).serialize())
        let whole = try Engine(model: Model(gguf: gguf), threads: 1, maxBatchTokens: 64)
        let shards = try ShardSet(gguf: gguf, size: size, threads: 2, maxBatchTokens: 8)   // 8: forces chunking
        let layerBytes = whole.model.packedWeightBytes
        let shardBytes = shards.engines.map(\.model.packedWeightBytes)
        #expect(shardBytes.allSatisfy { $0 < layerBytes }, "\(shardBytes) vs \(layerBytes)")
        #expect(shards.engines.map(\.kvBytesPerToken).reduce(0, +) == whole.kvBytesPerToken)

        let prompts: [[Int32]] = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [40, 41], [63, 0, 17, 5, 5]]
        let ws = try prompts.map { _ in try whole.createSequence(maxContext: 40) }
        let ss = try prompts.map { _ in try shards.createSequence(maxContext: 40) }
        var wl: [[Float]] = []
        for i in prompts.indices { wl.append(Array(try whole.forward([BatchItem(sequence: ws[i], tokens: prompts[i])]).logits(item: 0))) }
        var sl = try shards.forward(prompts.indices.map { (ss[$0], prompts[$0]) })
        var maxErr: Float = 0, scale: Float = 0
        for step in 0..<12 {
            var next: [Int32] = []
            for i in prompts.indices {
                for j in 0..<wl[i].count { maxErr = max(maxErr, abs(wl[i][j] - sl[i][j])); scale = max(scale, abs(wl[i][j])) }
                let a = argmaxOf(wl[i]), b = argmaxOf(sl[i])
                #expect(a == b, "K=\(size) step \(step) item \(i): \(a) vs \(b)")
                next.append(a)
            }
            let out = try whole.forward(prompts.indices.map { BatchItem(sequence: ws[$0], tokens: [next[$0]]) })
            wl = prompts.indices.map { Array(out.logits(item: $0)) }
            sl = try shards.forward(prompts.indices.map { (ss[$0], [next[$0]]) })
        }
        // Same weights and quantized activations; only the float summation order of the two split
        // projections differs (and with it the 8-bit rounding of later activations).
        print("sharded K=\(size): max logit difference \(maxErr) (logit scale \(scale))")
        #expect(maxErr < 0.02 * scale, "K=\(size): max logit difference \(maxErr) (scale \(scale))")
        let stats = shards.engines.map { $0.group!.stats }
        #expect(stats.allSatisfy { $0.calls == stats[0].calls && $0.calls > 0 })
    }

    /// The all-reduce leaves bit-identical sums on every shard, whatever each shard's thread count.
    @Test func allReduceIsIdenticalOnEveryShard() throws {
        let size = 3, dim = 192, rows = 100
        let gguf = try GGUFFile(bytes: tpTinyModel(types: [.q4_1]).serialize())
        let group = try TPGroup.create(size: size, config: Model(gguf: gguf).config, maxBatchTokens: rows)
        let results = onShardThreads(size) { r -> [Float] in
            let g = try TPGroup(fd: group.fd, byteCount: group.byteCount, rank: r, size: size)
            g.spin = 256
            let pool = syk_pool_create(Int32(r + 1), 64)   // 1, 2, 3 threads
            defer { syk_pool_destroy(pool) }
            var rng = TestRNG(seed: 99)
            var x = (0..<(rows * dim)).map { _ in rng.float() }   // same start on every shard
            for round in 0..<5 {
                var prng = TestRNG(seed: UInt64(1000 * r + round))
                let p = g.ownPartial
                for i in 0..<(rows * dim) { p[i] = prng.float() * 3 }
                try x.withUnsafeMutableBufferPointer { try g.allReduce(rows: rows, addInto: $0.baseAddress!, pool: pool) }
            }
            return x
        }
        let xs = try results.map { try $0.get() }
        #expect(xs[1] == xs[0] && xs[2] == xs[0])
        // Against a sequential reference in rank order.
        var rng = TestRNG(seed: 99)
        var ref = (0..<(rows * dim)).map { _ in rng.float() }
        for round in 0..<5 {
            var ps: [[Float]] = []
            for r in 0..<size { var prng = TestRNG(seed: UInt64(1000 * r + round)); ps.append((0..<(rows * dim)).map { _ in prng.float() * 3 }) }
            for i in ref.indices { for r in 0..<size { ref[i] += ps[r][i] } }
        }
        #expect(xs[0] == ref)
    }
}

@Suite(.serialized) struct TPGroupFailureTests {
    static func group(size: Int) throws -> TPGroup {
        let gguf = try GGUFFile(bytes: tpTinyModel(types: [.q4_1]).serialize())
        return try TPGroup.create(size: size, config: Model(gguf: gguf).config, maxBatchTokens: 4)
    }

    /// A shard engine must use its group's token limit exactly, and an all-reduce of more rows than a
    /// partial slot holds is refused before anything is read.
    @Test func limitsAreChecked() throws {
        let gguf = try GGUFFile(bytes: tpTinyModel(types: [.q4_1]).serialize())
        let owner = try Self.group(size: 2)   // maxBatchTokens 4
        let g = try TPGroup(fd: owner.fd, byteCount: owner.byteCount, rank: 0, size: 2)
        let m = try Model(gguf: gguf, options: ModelOptions(shard: ShardSpec(rank: 0, size: 2)))
        for limit in [2, 8] {
            #expect(throws: EngineError.self, "maxBatchTokens \(limit) against the group's 4") {
                try Engine(model: m, threads: 1, maxBatchTokens: limit, group: g)
            }
        }
        _ = try Engine(model: m, threads: 1, maxBatchTokens: 4, group: g)
        var x = [Float](repeating: 0, count: 5 * g.dim)
        for rows in [-1, 5] {
            // badArgument before the barrier (which would otherwise wait for the absent rank 1).
            do {
                try x.withUnsafeMutableBufferPointer { try g.allReduce(rows: rows, addInto: $0.baseAddress!, pool: nil) }
                Issue.record("all-reduce of \(rows) rows accepted")
            } catch let e as TPError {
                guard case .badArgument = e else { Issue.record("rows \(rows): \(e)"); continue }
            }
        }
    }

    /// A peer process that dies makes the others' barrier fail (not hang), and the group is aborted.
    @Test func deadPeerFailsTheBarrier() throws {
        let owner = try Self.group(size: 2)
        let peer = Process()
        peer.executableURL = URL(fileURLWithPath: "/bin/sleep")
        peer.arguments = ["30"]
        try peer.run()
        owner.registerPeer(rank: 1, pid: peer.processIdentifier)   // as a spawner would
        let leader = try TPGroup(fd: owner.fd, byteCount: owner.byteCount, rank: 0, size: 2)
        leader.spin = 64
        let pid = peer.processIdentifier
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.3) { kill(pid, SIGKILL) }   // SIGTERM may be ignored (inherited)
        let t0 = Date()
        do {
            try leader.barrier()
            Issue.record("barrier completed without the peer")
        } catch let e as TPError {
            #expect(e == .peerDied(rank: 1, pid: peer.processIdentifier), "\(e)")
        }
        #expect(Date().timeIntervalSince(t0) < 5)
        #expect(owner.isAborted)
        peer.waitUntilExit()
        // A later wait fails at once, with the abort.
        #expect(throws: TPError.self) { try leader.barrier() }
    }

    /// A follower whose leader dies stops waiting for commands; a shard that never attaches times out.
    @Test func deadLeaderAndNeverAttached() throws {
        let owner = try Self.group(size: 2)
        let fake = Process()
        fake.executableURL = URL(fileURLWithPath: "/bin/sleep")
        fake.arguments = ["30"]
        try fake.run()
        owner.registerPeer(rank: 0, pid: fake.processIdentifier)
        let follower = try TPGroup(fd: owner.fd, byteCount: owner.byteCount, rank: 1, size: 2)
        follower.spin = 64
        kill(fake.processIdentifier, SIGKILL)
        fake.waitUntilExit()   // reaped: pidfd_open fails with ESRCH, also detected
        #expect(throws: TPError.peerDied(rank: 0, pid: fake.processIdentifier)) { try follower.nextCommand() }

        let lonely = try Self.group(size: 2)
        let rank0 = try TPGroup(fd: lonely.fd, byteCount: lonely.byteCount, rank: 0, size: 2)
        rank0.attachTimeout = 0.2
        rank0.spin = 64
        #expect(throws: TPError.peerNeverAttached(rank: 1, seconds: 0.2)) { try rank0.barrier() }
    }

    /// abort() wakes a follower sleeping for the next command; commands travel in order with payloads.
    @Test func commandsAndAbort() throws {
        let owner = try Self.group(size: 2)
        let results = onShardThreads(2) { r -> [TPCommand] in
            let g = try TPGroup(fd: owner.fd, byteCount: owner.byteCount, rank: r, size: 2)
            g.spin = 64
            if r == 0 {
                try g.publish(.create(slot: 3, maxContext: 100))
                try g.publish(.forward([TPForwardItem(slot: 3, position: 0, tokens: [5, 6, 7]), TPForwardItem(slot: 1, position: 9, tokens: [8])]))
                try g.publish(.truncate(slot: 3, length: 2))
                #expect(throws: TPError.self) { try g.publish(.forward([TPForwardItem(slot: 0, position: 0, tokens: [1, 2, 3, 4, 5])])) }
                try g.publish(.release(slot: 3))
                Thread.sleep(forTimeInterval: 0.3)   // the follower is asleep in its next wait by now
                owner.abort()
                return []
            }
            var got: [TPCommand] = []
            while true {
                do { got.append(try g.nextCommand()) } catch { break }
            }
            return got
        }
        _ = try results[0].get()
        #expect(try results[1].get() == [.create(slot: 3, maxContext: 100),
                                         .forward([TPForwardItem(slot: 3, position: 0, tokens: [5, 6, 7]), TPForwardItem(slot: 1, position: 9, tokens: [8])]),
                                         .truncate(slot: 3, length: 2), .release(slot: 3)])
    }

    /// create(fd:) on an empty memfd by rank 0 and attach by a follower (the spawner hands both one fd).
    @Test func createOnEmptyMemfdAndAttach() throws {
        let fd = memfdForTest()
        defer { close(fd) }
        let gguf = try GGUFFile(bytes: tpTinyModel(types: [.q4_1]).serialize())
        let config = try Model(gguf: gguf).config
        #expect(throws: TPError.self) { try TPGroup.attach(fd: fd, rank: 1, size: 2, timeoutSeconds: 0.05) }
        let results = onShardThreads(2) { r -> Int in
            if r == 0 {
                Thread.sleep(forTimeInterval: 0.1)
                return try TPGroup.create(fd: fd, size: 2, config: config, maxBatchTokens: 16).byteCount
            }
            return try TPGroup.attach(fd: fd, rank: 1, size: 2, timeoutSeconds: 5).byteCount
        }
        let sizes = try results.map { try $0.get() }
        let expected = try TPGroup.byteCount(size: 2, config: config, maxBatchTokens: 16)
        #expect(sizes[0] == sizes[1] && sizes[0] == expected)
        #expect(throws: TPError.self) { try TPGroup.attach(fd: fd, rank: 1, size: 3, timeoutSeconds: 0.05) }
        // A mapping that is not a group (zeros, or random bytes) is a typed error, not a crash.
        let junk = memfdForTest()
        defer { close(junk) }
        var rng = TestRNG(seed: 5)
        let bytes = (0..<8192).map { _ in UInt8.random(in: 0...255, using: &rng) }
        bytes.withUnsafeBytes { _ = write(junk, $0.baseAddress, $0.count) }
        #expect(throws: TPError.self) { try TPGroup(fd: junk, byteCount: 8192, rank: 0, size: 2) }
        #expect(throws: TPError.self) { try TPGroup(fd: junk, byteCount: 4096, rank: 0, size: 2) }
        #expect(throws: TPError.self) { try TPGroup(fd: fd, byteCount: expected, rank: 2, size: 2) }
    }
}

func argmaxOf(_ l: [Float]) -> Int32 {
    var best = 0
    for i in 1..<l.count where l[i] > l[best] { best = i }
    return Int32(best)
}

private func memfdForTest() -> Int32 {
    // memfd_create via the syscall-free path: an unlinked temp file behaves the same for these tests.
    let path = TestPaths.tempFile("tpfd")
    let fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
    unlink(path)
    return fd
}
