// The worker's own CPU per request, without rings or a model: what the engine loop runs for one small
// echo-engine completion — decode the submit record, admit it, one scheduler step (prefill, sample), and
// encode the delta and done records it publishes — timed over many iterations on one thread. The front
// bench prints it beside FrontCPUProbe's pieces, so the request path's cost on the worker side is tracked
// by numbers that stay put while socket round trips on a shared VM swing by microseconds.
import Glibc
import Wire

public enum WorkerCPUProbe {
    public struct Result: Sendable {
        /// Nanoseconds per request: submit decode → handle → step(s) → every published record encoded.
        public var requestNs: Double
        /// Records published per request (a delta and a done for the default prompt).
        public var recordsPerRequest: Double
    }

    public struct ProbeError: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// Times `iterations` requests with `prompt` (a completion; max_tokens = the prompt's length in bytes,
    /// so the echo engine answers it in full).
    public static func run(prompt: String = "h", iterations: Int) throws -> Result {
        var sampling = WireSampling()
        sampling.maxTokens = UInt32(max(1, prompt.utf8.count))
        var writer = WireWriter(capacity: 1 << 12)
        var published = 0
        var failed: String? = nil
        // The worker's publish: encode into the reused writer and copy the bytes out (the ring's reserve + copy).
        var sinkBuffer = [UInt8](repeating: 0, count: 1 << 12)
        let scheduler = Scheduler(
            runner: EchoRunner(slots: 64 + 256, contextLength: 1 << 16, maxBatchTokens: 1 << 16), text: EchoText(),
            config: SchedulerConfig(), clock: { sy_probe_clock() },
            publish: { record in
                writer.reset()
                do { try record.encode(into: &writer) } catch { failed = "\(error)"; return }
                let n = min(writer.count, sinkBuffer.count)
                writer.withBytes { src in
                    sinkBuffer.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: src.baseAddress!, byteCount: n) }
                }
                if case .error(let e) = record { failed = e.message }
                published += 1
            })
        // One submit record's bytes, as the front encodes it; every iteration decodes it with a new id.
        var submitBytes = WireWriter()
        try Record.submit(SubmitRecord(requestID: 1, kind: .completion, sessionKey: "", sampling: sampling, prompt: prompt))
            .encode(into: &submitBytes)
        let payload = submitBytes.bytes
        let type = UInt32(RecordType.submit.rawValue)
        var iterationsRun = 0
        let ns = try time(iterations) {
            iterationsRun += 1
            let record = try payload.withUnsafeBytes { try Record.decode(type: type, payload: $0) }
            scheduler.handle(record)
            var steps = 0
            while scheduler.hasWork {
                try scheduler.step()
                steps += 1
                if steps > 1 << 16 { throw ProbeError(message: "the probe request does not finish") }
            }
        }
        if let failed { throw ProbeError(message: "the probe request failed: \(failed)") }
        return Result(requestNs: ns, recordsPerRequest: Double(published) / Double(max(1, iterationsRun)))
    }

    /// Best of 5 rounds of `iterations / 5`, in ns per iteration (the minimum filters out preemption).
    private static func time(_ iterations: Int, _ body: () throws -> Void) throws -> Double {
        let per = max(1, iterations / 5)
        var best = Double.infinity
        for _ in 0..<5 {
            let a = sy_probe_clock()
            for _ in 0..<per { try body() }
            let b = sy_probe_clock()
            best = min(best, Double(b - a) / Double(per))
        }
        return best
    }

    private static func sy_probe_clock() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }
}
