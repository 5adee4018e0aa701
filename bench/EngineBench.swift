import ArgumentParser
import Engine
import Foundation

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

    func run() throws {
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

        _ = try prefillOnce(); _ = try decodeOnce()   // warm-up (page in weights, spin up threads)
        var pp: [Double] = [], tg: [Double] = [], ppCPU: [Double] = [], tgCPU: [Double] = []
        for _ in 0..<reps {
            pp.append(try prefillOnce()); ppCPU.append(cpuRate)
            tg.append(try decodeOnce()); tgCPU.append(cpuRate)
        }
        let (ppm, pps) = meanSD(pp), (tgm, tgs) = meanSD(tg)
        let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").first.map(String.init) ?? "?"
        print(String(format: "engine: isa %@ threads %d batch %d | prefill pp%d %.1f ± %.1f tok/s | decode tg%d %.1f ± %.1f tok/s (aggregate) | load %@",
                     KernelISA.current.description, threads, batch, prompt, ppm, pps, gen, tgm, tgs, load))
        if let json {
            let obj: [String: Any] = [
                "prefill_tok_per_s": ppm, "prefill_sd": pps, "decode_tok_per_s": tgm, "decode_sd": tgs,
                "batch": batch, "threads": threads, "isa": KernelISA.current.description, "prompt": prompt, "gen": gen, "reps": reps,
                "loadavg_1m": Double(load) ?? -1, "packed_weight_bytes": m.packedWeightBytes,
                "scratch_bytes": engine.scratchBytes,
                "prefill_tok_per_cpu_s": meanSD(ppCPU).0, "decode_tok_per_cpu_s": meanSD(tgCPU).0, "kv_bytes_per_token": engine.kvBytesPerToken,
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
