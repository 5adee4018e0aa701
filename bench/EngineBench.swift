import ArgumentParser
import CSwitchyardKernels
import Engine
import Foundation
import SysKit
import Worker

/// `switchyard-bench engine`: prefill and decode throughput of the engine on a model file.
struct EngineBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "engine",
        abstract: "Engine throughput: prefill (pp) and decode (tg) tokens/s, mean ± sd over repetitions.")

    @Option(help: "GGUF model path (tools/fetch-model downloads the default one).")
    var model: String = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    @Option(help: "Compute threads (including the calling thread).") var threads: Int = 1
    @Option(help: "Prompt tokens for the prefill measurement.") var prompt: Int = 512
    @Option(help: "Tokens generated per sequence for the decode measurement.") var gen: Int = 128
    @Option(help: "Sequences decoding together (aggregate tok/s is reported).") var batch: Int = 1
    @Option(help: "Measured repetitions (after one warm-up).") var reps: Int = 3
    @Option(help: "Write JSON results to PATH, or '-' for stdout.") var json: String?
    @Option(help: "Kernel instruction set: avx512, avx2 or scalar (default: the best this CPU has; env SWITCHYARD_ISA).")
    var isa: String?
    @Option(help: "Repacked weights: 'private' or a directory for a shared file (e.g. /dev/shm).") var repack: String = "private"
    @Option(help: "Tensor-parallel shards: K > 1 runs K shard processes (this one is rank 0), --threads each.") var tp: Int = 1
    @Option(name: .customLong("tp-spin"), help: "Spin iterations before a shard sleeps in a group wait (--tp > 1).") var tpSpin: Int = 1 << 12
    @Flag(help: "Pin shard r's threads to CPUs r*threads ..< (r+1)*threads of the allowed set (--tp > 1).") var pin = false

    func run() throws {
        if tp > 1 { return try runTensorParallel() }
        guard FileManager.default.fileExists(atPath: model) else {
            throw ValidationError("model \(model) not found: run tools/fetch-model")
        }
        guard prompt >= 1, gen >= 1, batch >= 1, reps >= 1 else { throw ValidationError("counts must be >= 1") }
        if let isa {
            guard let level = KernelISA(name: isa) else { throw ValidationError("--isa must be avx512, avx2 or scalar") }
            guard KernelISA.set(level) == level else { throw ValidationError("this CPU does not support \(isa) (best: \(KernelISA.best))") }
        }
        let opts = ModelOptions(repack: repack == "private" ? .privateMemory : .sharedFile(directory: repack))
        let m = try Model(path: model, options: opts)
        let engine = try Engine(model: m, threads: threads, maxBatchTokens: max(prompt, batch))
        if let isa, let level = KernelISA(name: isa) { KernelISA.set(level) }   // over SWITCHYARD_ISA
        let vocab = m.config.vocabSize
        var rng = SystemRandomNumberGenerator()
        let promptTokens = (0..<prompt).map { _ in Int32.random(in: 0..<Int32(vocab), using: &rng) }

        // Process CPU time alongside wall time: on a shared machine, tokens per CPU-second of a 1-thread run
        // do not count the time the thread waited for a core (pool threads spin, so with T > 1 it is a bound).
        func cpuNow() -> Double {
            var ts = timespec()
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
            return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        }
        var cpuRate = 0.0
        func prefillOnce() throws -> Double {
            let s = try engine.createSequence(maxContext: prompt + 1)
            defer { engine.freeSequence(s) }
            let c0 = cpuNow(), t0 = DispatchTime.now().uptimeNanoseconds
            _ = try engine.forward([BatchItem(sequence: s, tokens: promptTokens)])
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            cpuRate = Double(prompt) / (cpuNow() - c0)
            return Double(prompt) / dt
        }
        // Decode: `batch` sequences each start from a short prompt (like llama-bench tg: generation from an
        // almost empty context), then generate `gen` tokens together, one token per sequence per step.
        func decodeOnce() throws -> Double {
            var seqs: [SequenceID] = []
            defer { for s in seqs { engine.freeSequence(s) } }
            for _ in 0..<batch {
                let s = try engine.createSequence(maxContext: gen + 2)
                seqs.append(s)
                _ = try engine.forward([BatchItem(sequence: s, tokens: [promptTokens[0]])])
            }
            var next = [Int32](repeating: promptTokens[0], count: batch)
            var items = seqs.map { BatchItem(sequence: $0, tokens: [0]) }
            let c0 = cpuNow(), t0 = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<gen {
                for i in 0..<batch { items[i].tokens[0] = next[i] }
                let out = try engine.forward(items)
                for i in 0..<batch {
                    let l = out.logits(item: i)
                    var best = 0
                    for j in 1..<l.count where l[j] > l[best] { best = j }
                    next[i] = Int32(best)
                }
            }
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            cpuRate = Double(gen * batch) / (cpuNow() - c0)
            return Double(gen * batch) / dt
        }

        // Single-thread read bandwidth in this run: the same streaming loads as the matmul, over a 256 MiB
        // buffer (larger than the weights; a host L3 as large as this machine's 300 MiB may still hold part
        // of it). Decode of one sequence reads every weight once per token, so its tok/s times the weight
        // bytes is compared with this figure.
        func readBandwidth() -> Double {
            let n = 256 << 20
            guard let p = mmap(nil, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else { return 0 }
            defer { munmap(p, n) }
            _ = madvise(p, n, MADV_HUGEPAGE)
            memset(p, 1, n)
            var best = Double.infinity, sink: UInt64 = 0
            for _ in 0..<3 {
                let t0 = DispatchTime.now().uptimeNanoseconds
                sink ^= syk_stream_read(p, n)
                best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            }
            return sink == 42 ? 0 : Double(n) / best / 1e9
        }
        _ = try prefillOnce(); _ = try decodeOnce()   // warm-up (page in weights, spin up threads)
        let bandwidth0 = readBandwidth()
        var pp: [Double] = [], tg: [Double] = [], ppCPU: [Double] = [], tgCPU: [Double] = []
        for _ in 0..<reps {
            pp.append(try prefillOnce()); ppCPU.append(cpuRate)
            tg.append(try decodeOnce()); tgCPU.append(cpuRate)
        }
        let bandwidth = (bandwidth0 + readBandwidth()) / 2   // before and after the measurements
        let (ppm, pps) = meanSD(pp), (tgm, tgs) = meanSD(tg)
        // Weight bytes streamed per second of decode: one pass over the packed weights per step.
        let decodeReadGBs = tgm / Double(batch) * Double(m.packedWeightBytes) / 1e9
        let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").first.map(String.init) ?? "?"
        print(String(format: "engine: isa %@ threads %d batch %d | prefill pp%d %.1f ± %.1f tok/s | decode tg%d %.1f ± %.1f tok/s (aggregate) | weights read %.1f GB/s, 1-thread read bandwidth %.1f GB/s | load %@",
                     KernelISA.current.description, threads, batch, prompt, ppm, pps, gen, tgm, tgs, decodeReadGBs, bandwidth, load))
        if let json {
            let obj: [String: Any] = [
                "prefill_tok_per_s": ppm, "prefill_sd": pps, "decode_tok_per_s": tgm, "decode_sd": tgs,
                "batch": batch, "threads": threads, "isa": KernelISA.current.description, "prompt": prompt, "gen": gen, "reps": reps,
                "loadavg_1m": Double(load) ?? -1, "packed_weight_bytes": m.packedWeightBytes,
                "scratch_bytes": engine.scratchBytes,
                "prefill_tok_per_cpu_s": meanSD(ppCPU).0, "decode_tok_per_cpu_s": meanSD(tgCPU).0, "kv_bytes_per_token": engine.kvBytesPerToken,
                "decode_weight_read_gb_per_s": decodeReadGBs, "read_bandwidth_gb_per_s": bandwidth,
            ]
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
            if json == "-" { print(String(decoding: data, as: UTF8.self)) }
            else { try data.write(to: URL(fileURLWithPath: json)) }
        }
    }

    /// `--tp K`: K shard processes of one group (rank 0 here drives a TPLeaderRunner like a worker's
    /// scheduler would; ranks 1..<K are `engine-shard` children of this binary running TPFollower).
    func runTensorParallel() throws {
        guard FileManager.default.fileExists(atPath: model) else {
            throw ValidationError("model \(model) not found: run tools/fetch-model")
        }
        guard prompt >= 1, gen >= 1, batch >= 1, reps >= 1, tp <= 16 else { throw ValidationError("counts must be >= 1, --tp <= 16") }
        let T = max(prompt, batch), ctx = prompt + gen + 2, slots = max(batch, 1)
        let repackOpt = repack == "private" ? RepackStorage.privateMemory : .sharedFile(directory: repack)
        let m = try Model(path: model, options: ModelOptions(repack: repackOpt, shard: ShardSpec(rank: 0, size: tp)))
        let owner = try TPGroup.create(size: tp, config: m.config, maxBatchTokens: T)
        let exe = try currentExecutablePath()
        final class Child { var p: ChildProcess?; init(_ p: consuming ChildProcess) { self.p = consume p } }
        var children: [Child] = []
        for r in 1..<tp {
            var args = ["engine-shard", "--fd", "3", "--bytes", "\(owner.byteCount)", "--rank", "\(r)", "--size", "\(tp)",
                        "--model", model, "--threads", "\(threads)", "--max-batch", "\(T)", "--context", "\(ctx)",
                        "--slots", "\(slots)", "--repack", repack, "--spin", "\(tpSpin)"]
            if pin { args.append("--pin") }
            let c = try ChildProcess.spawn(path: exe, arguments: args, inherit: [InheritedDescriptor(owner.fd, as: 3)])
            owner.registerPeer(rank: r, pid: c.pid)   // a child dying before it attaches is noticed too
            children.append(Child(c))
        }
        let g = try TPGroup(fd: owner.fd, byteCount: owner.byteCount, rank: 0, size: tp)
        g.spin = tpSpin
        let engine = try Engine(model: m, threads: threads, maxBatchTokens: T, group: g)
        if pin { try pinShard(engine, rank: 0, threads: threads) }
        let runner = TPLeaderRunner(engine: engine, group: g, contextLength: ctx, slots: slots)
        let vocab = m.config.vocabSize
        var rng = SystemRandomNumberGenerator()
        let promptTokens = (0..<prompt).map { _ in Int32.random(in: 0..<Int32(vocab), using: &rng) }
        g.recordSamples(capacity: 1 << 20)

        struct Phase { var tokPerS: Double; var steps: Int; var reduceNs: UInt64; var reduceCalls: Int; var waitNs: UInt64 }
        func acquire() throws -> Int {
            guard let s = runner.acquireSequence() else { throw runner.failure ?? TPError.badArgument("no free slot") }
            return s
        }
        func prefillOnce() throws -> Phase {
            let s = try acquire()
            defer { runner.releaseSequence(s) }
            let before = g.stats
            let t0 = DispatchTime.now().uptimeNanoseconds
            try runner.forward([StepItem(sequence: s, position: 0, tokens: promptTokens[...])]) { _, _ in }
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            let a = g.stats
            return Phase(tokPerS: Double(prompt) / dt, steps: 1, reduceNs: a.totalNs - before.totalNs,
                         reduceCalls: a.calls - before.calls, waitNs: a.waitNs - before.waitNs)
        }
        func decodeOnce() throws -> Phase {
            var seqs: [Int] = []
            defer { for s in seqs { runner.releaseSequence(s) } }
            for _ in 0..<batch {
                let s = try acquire()
                seqs.append(s)
                try runner.forward([StepItem(sequence: s, position: 0, tokens: promptTokens[0...0])]) { _, _ in }
            }
            var next = [Int32](repeating: promptTokens[0], count: batch)
            var items = seqs.map { StepItem(sequence: $0, position: 1, tokens: [0][...]) }
            let before = g.stats
            let t0 = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<gen {
                for i in 0..<batch { items[i].tokens = [next[i]][...] }
                try runner.forward(items) { i, l in
                    var best = 0
                    for j in 1..<l.count where l[j] > l[best] { best = j }
                    next[i] = Int32(best)
                }
                for i in 0..<batch { items[i].position += 1 }
            }
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            let a = g.stats
            return Phase(tokPerS: Double(gen * batch) / dt, steps: gen, reduceNs: a.totalNs - before.totalNs,
                         reduceCalls: a.calls - before.calls, waitNs: a.waitNs - before.waitNs)
        }

        _ = try prefillOnce(); _ = try decodeOnce()   // warm-up
        g.resetStats()
        var pp: [Phase] = [], tg: [Phase] = []
        for _ in 0..<reps { pp.append(try prefillOnce()); tg.append(try decodeOnce()) }
        let samples = g.recordedSamples.sorted()
        runner.shutdown()
        for c in children {
            if var p = c.p.take() {
                let st = try p.wait()
                guard st == .exited(0) else { throw ValidationError("shard process \(st)") }
            }
        }
        func pct(_ q: Double) -> Double { samples.isEmpty ? 0 : Double(samples[min(samples.count - 1, Int(q * Double(samples.count)))]) }
        let (ppm, pps) = meanSD(pp.map(\.tokPerS)), (tgm, tgs) = meanSD(tg.map(\.tokPerS))
        let ppSteps = pp.reduce(0) { $0 + $1.steps }, tgSteps = tg.reduce(0) { $0 + $1.steps }
        let ppReduce = Double(pp.reduce(UInt64(0)) { $0 + $1.reduceNs }) / Double(ppSteps)
        let tgReduce = Double(tg.reduce(UInt64(0)) { $0 + $1.reduceNs }) / Double(tgSteps)
        let tgWait = Double(tg.reduce(UInt64(0)) { $0 + $1.waitNs }) / Double(tgSteps)
        let callsPerStep = Double(tg.reduce(0) { $0 + $1.reduceCalls }) / Double(tgSteps)
        let allCalls = pp.reduce(0) { $0 + $1.reduceCalls } + tg.reduce(0) { $0 + $1.reduceCalls }
        let meanCall = Double(pp.reduce(UInt64(0)) { $0 + $1.reduceNs } + tg.reduce(UInt64(0)) { $0 + $1.reduceNs }) / Double(max(allCalls, 1))
        let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").first.map(String.init) ?? "?"
        print(String(format: "engine: tp %d x threads %d batch %d | prefill pp%d %.1f ± %.1f tok/s | decode tg%d %.1f ± %.1f tok/s (aggregate, per group) | all-reduce per decode step %.1f us (%.0f calls, wait %.1f us), per prefill step %.1f us, per call mean %.1f p50 %.1f p99 %.1f us | load %@",
                     tp, threads, batch, prompt, ppm, pps, gen, tgm, tgs, tgReduce / 1e3, callsPerStep, tgWait / 1e3, ppReduce / 1e3,
                     meanCall / 1e3, pct(0.5) / 1e3, pct(0.99) / 1e3, load))
        if let json {
            let obj: [String: Any] = [
                "prefill_tok_per_s": ppm, "prefill_sd": pps, "decode_tok_per_s": tgm, "decode_sd": tgs,
                "batch": batch, "threads": threads, "tp": tp, "tp_spin": tpSpin, "prompt": prompt, "gen": gen, "reps": reps, "pinned": pin,
                "loadavg_1m": Double(load) ?? -1, "packed_weight_bytes_rank0": m.packedWeightBytes,
                "kv_bytes_per_token_rank0": engine.kvBytesPerToken,
                "allreduce_ns_per_decode_step": tgReduce, "allreduce_wait_ns_per_decode_step": tgWait,
                "allreduce_ns_per_prefill_step": ppReduce, "allreduce_calls_per_step": callsPerStep,
                "allreduce_ns_per_call_mean": meanCall, "allreduce_ns_per_call_p50": pct(0.5), "allreduce_ns_per_call_p99": pct(0.99),
                "allreduce_calls_measured": allCalls,
            ]
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
            if json == "-" { print(String(decoding: data, as: UTF8.self)) }
            else { try data.write(to: URL(fileURLWithPath: json)) }
        }
    }

    func meanSD(_ v: [Double]) -> (Double, Double) {
        let m = v.reduce(0, +) / Double(v.count)
        let sd = v.count > 1 ? (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count - 1)).squareRoot() : 0
        return (m, sd)
    }
}

/// Pins an engine's threads (caller + pool) of shard `rank` to CPUs rank*threads ..< (rank+1)*threads of
/// the allowed set, one thread per CPU.
func pinShard(_ engine: Engine, rank: Int, threads: Int) throws {
    let cpus = try CPUAffinity.get()
    guard cpus.count >= (rank + 1) * threads else { throw ValidationError("--pin: \(cpus.count) CPUs allowed, shard \(rank) needs \((rank + 1) * threads)") }
    let mine = Array(cpus[(rank * threads)..<((rank + 1) * threads)])
    try CPUAffinity.set([mine[0]])
    for (i, tid) in engine.workerThreadIDs.enumerated() { try CPUAffinity.set([mine[i + 1]], pid: tid) }
}

/// `switchyard-bench engine-shard` (internal): rank > 0 of `engine --tp K`, a TPFollower until shutdown.
struct EngineShardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "engine-shard", abstract: "Internal: a follower shard of `engine --tp`.",
                                                    shouldDisplay: false)
    @Option var fd: Int32
    @Option var bytes: Int
    @Option var rank: Int
    @Option var size: Int
    @Option var model: String
    @Option var threads: Int = 1
    @Option(name: .customLong("max-batch")) var maxBatch: Int
    @Option var context: Int
    @Option var slots: Int
    @Option var repack: String = "private"
    @Option var spin: Int = 1 << 12
    @Flag var pin = false

    func run() throws {
        let g = try TPGroup(fd: fd, byteCount: bytes, rank: rank, size: size)
        g.spin = spin
        let opts = ModelOptions(repack: repack == "private" ? .privateMemory : .sharedFile(directory: repack),
                                shard: try ShardSpec(rank: rank, size: size))
        let engine = try Engine(model: Model(path: model, options: opts), threads: threads, maxBatchTokens: maxBatch, group: g)
        if pin { try pinShard(engine, rank: rank, threads: threads) }
        try TPFollower(engine: engine, group: g, contextLength: context, slots: slots).run()
    }
}
