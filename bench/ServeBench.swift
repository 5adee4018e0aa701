// `switchyard-bench serve`: load-test an OpenAI-compatible server (Switchyard, llama-server, vLLM...) over a
// Unix socket or TCP. The statistics, workload and plotting live in BenchKit; this file is the command line.
import ArgumentParser
import BenchKit
import ClientKit
import Foundation

struct ServeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Latency/throughput bench against a running OpenAI-compatible server.",
        discussion: """
            Metrics: TTFT; TPOT = (E2E − TTFT)/(output_tokens − 1); ITL per streamed chunk; E2E; throughput;
            goodput (--goodput); errors by kind; requests per worker (X-Switchyard-Worker); session affinity
            (share of turns 2..T served by turn 1's worker); cache hit rate (cached_tokens / prompt_tokens).
            """
    )

    @Option(name: .long, help: "Unix socket of the server.") var socket: String?
    @Option(name: .long, help: "http://HOST:PORT of a TCP server.") var url: String?
    @Option(name: .long, help: "Concurrent chat sessions.") var sessions: Int = 16
    @Option(name: .long, help: "Turns per session (each appends the previous answer).") var turns: Int = 4
    @Option(name: .customLong("prompt-tokens"), help: "New user-message length per turn, MEAN[:SD] (words ≈ tokens).")
    var promptTokens: String = "128"
    @Option(name: .customLong("max-tokens"), help: "Tokens to generate per request.") var maxTokens: Int = 64
    @Option(name: .long, help: "Sampling temperature.") var temperature: Double?
    @Option(name: .long, help: "Model name sent in requests.") var model: String?
    @Option(name: .long, help: "Workload seed.") var seed: UInt64 = 0
    @Option(name: .long, help: "Open loop: arrivals per second (Poisson).") var rate: Double?
    @Option(name: .long, help: "Open loop: gamma shape; 1 = Poisson, < 1 burstier.") var burstiness: Double = 1
    @Option(name: .customLong("max-in-flight"), help: "Open loop: client threads (cap on requests in flight).")
    var maxInFlight: Int = 256
    @Option(name: .long, help: "Closed loop: clients sending back to back.") var concurrency: Int?
    @Option(name: .long, help: "Seconds to issue requests.") var duration: Double?
    @Option(name: .long, help: "Measured requests (default 100 unless --duration).") var requests: Int?
    @Option(name: .long, help: "Warm-up requests, excluded from every figure.") var warmup: Int = 4
    @Option(name: .long, help: "SLOs for goodput, e.g. ttft:500,tpot:50 (ms).") var goodput: String?
    @Option(name: .long, help: "Seconds without progress before a request fails.") var timeout: Double = 300
    @Option(name: .long, help: "Write every figure as JSON to PATH ('-' for stdout).") var json: String?
    @Option(name: .long, help: "Write an SVG plot (latency CDFs, TTFT over time).") var plot: String?
    @Option(name: .customLong("compare-policies"), help: "Not available yet (needs `switchyard serve`).")
    var comparePolicies: String?

    func validate() throws {
        if socket != nil && url != nil { throw ValidationError("give --socket or --url, not both") }
        if rate != nil && concurrency != nil { throw ValidationError("give --rate (open loop) or --concurrency (closed loop), not both") }
        if comparePolicies != nil {
            throw ValidationError("--compare-policies needs the server launcher, which is not built yet; run once per policy")
        }
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be >= 1") }
        guard warmup >= 0 else { throw ValidationError("--warmup must be >= 0") }
    }

    func run() throws {
        let endpoint: Endpoint = try url.map { try Endpoint.parse(url: $0) } ?? .unix(path: socket ?? "./switchyard.sock")
        let workload = try SessionWorkload(sessions: sessions, turns: turns, promptTokens: .parse(promptTokens), seed: seed)
        let mode: LoadMode = try rate.map { .openLoop(try ArrivalProcess(rate: $0, burstiness: burstiness), maxInFlight: maxInFlight) }
            ?? .closedLoop(concurrency: concurrency ?? 8)
        var cfg = ServeBenchConfig(endpoint: endpoint, workload: workload, mode: mode)
        cfg.maxTokens = maxTokens
        cfg.temperature = temperature
        cfg.model = model
        cfg.duration = duration
        cfg.requests = requests ?? (duration == nil ? 100 : nil)
        cfg.warmup = warmup
        cfg.timeout = timeout
        cfg.slo = try goodput.map { try GoodputSLO.parse($0) }
        let runner = try ServeBenchRunner(config: cfg)
        let live = isatty(2) != 0
        let result = runner.run { p in
            if live {
                let line = String(format: "\r[%6.1fs] %d done, %d errors, %d in flight, %.1f req/s   ",
                                  p.elapsedS, p.done, p.errors, p.inFlight, Double(p.done) / max(p.elapsedS, 1e-9))
                FileHandle.standardError.write(Data(line.utf8))
            }
        }
        if live { FileHandle.standardError.write(Data("\n".utf8)) }
        let s = result.summary
        let modeText: String
        switch mode {
        case .closedLoop(let c): modeText = "closed loop, concurrency \(c)"
        case .openLoop(let a, _): modeText = "open loop, \(a.rate) req/s, burstiness \(a.burstiness)"
        }
        if json != "-" {
            print("switchyard-bench serve: \(endpoint), \(modeText), \(sessions) sessions × \(turns) turns, "
                + "prompt \(promptTokens) words, max_tokens \(maxTokens), seed \(seed)")
            print(String(format: "requests %d (completed %d, errors %d) in %.2f s; %.2f req/s, %.1f output tok/s",
                         s.requests, s.completed, s.requests - s.completed, s.durationS, s.requestThroughput,
                         s.outputTokenThroughput))
            print("metric (ms)              mean      p50      p90      p99    p99.9")
            for (name, m) in [("TTFT", s.ttft), ("TPOT (excl. 1st token)", s.tpot), ("ITL (per chunk)", s.itl), ("E2E", s.e2e)] {
                print(name.padding(toLength: 22, withPad: " ", startingAt: 0)
                    + String(format: "%9.2f%9.2f%9.2f%9.2f%9.2f", m.meanMs, m.p50Ms, m.p90Ms, m.p99Ms, m.p999Ms))
            }
            if let g = s.goodput { print(String(format: "goodput %.2f req/s (%@)", g, goodput ?? "")) }
            if !s.errors.isEmpty { print("errors: " + s.errors.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")) }
            if !s.perWorker.isEmpty { print("per worker: " + s.perWorker.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")) }
            print("session affinity: " + (s.affinity.map { String(format: "%.3f", $0) } ?? "n/a")
                + "   cache hit rate: " + (s.cacheHitRate.map { String(format: "%.3f", $0) } ?? "n/a"))
        }
        if let path = json {
            var doc = s.json
            doc["endpoint"] = "\(endpoint)"
            doc["mode"] = modeText
            doc["workload"] = ["sessions": sessions, "turns": turns, "prompt_tokens": promptTokens, "max_tokens": maxTokens,
                               "seed": seed, "warmup": warmup] as [String: Any]
            let data = try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys])
            if path == "-" {
                FileHandle.standardOutput.write(data)
                print()
            } else {
                try data.write(to: URL(fileURLWithPath: path))
            }
        }
        if let path = plot {
            let svg = SVGPlot.report(title: "switchyard-bench serve: \(modeText)", runs: [("run", s, result.ttftOverTime)])
            try Data(svg.utf8).write(to: URL(fileURLWithPath: path))
        }
    }
}
