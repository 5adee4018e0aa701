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
    @Option(name: .customLong("compare-policies"),
            help: "Start `switchyard serve --policy P` once per policy (comma list) on a temporary socket, run the same workload, print the results side by side.")
    var comparePolicies: String?
    @Option(name: .customLong("server-args"), parsing: .unconditional, help: "With --compare-policies: extra `switchyard serve` arguments, one string.")
    var serverArgs: String = "--workers 2"
    @Option(name: .customLong("server-bin"), help: "With --compare-policies: the switchyard binary (default: next to this one).")
    var serverBin: String?
    @Option(name: .customLong("health-timeout"), help: "With --compare-policies: seconds to wait for GET /health 200.")
    var healthTimeout: Double = 300

    func validate() throws {
        if socket != nil && url != nil { throw ValidationError("give --socket or --url, not both") }
        if rate != nil && concurrency != nil { throw ValidationError("give --rate (open loop) or --concurrency (closed loop), not both") }
        if comparePolicies != nil {
            if socket != nil || url != nil { throw ValidationError("--compare-policies starts its own servers: drop --socket/--url") }
            if policies.isEmpty { throw ValidationError("--compare-policies needs at least one policy") }
        }
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be >= 1") }
        guard warmup >= 0 else { throw ValidationError("--warmup must be >= 0") }
    }

    var policies: [String] {
        (comparePolicies ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    var loadMode: LoadMode {
        get throws {
            try rate.map { .openLoop(try ArrivalProcess(rate: $0, burstiness: burstiness), maxInFlight: maxInFlight) }
                ?? .closedLoop(concurrency: concurrency ?? 8)
        }
    }

    var modeText: String {
        if let r = rate { return "open loop, \(r) req/s, burstiness \(burstiness)" }
        return "closed loop, concurrency \(concurrency ?? 8)"
    }

    var workloadJSON: [String: Any] {
        ["sessions": sessions, "turns": turns, "prompt_tokens": promptTokens, "max_tokens": maxTokens,
         "seed": seed, "warmup": warmup, "requests": requests ?? (duration == nil ? 100 : NSNull()) as Any,
         "duration_s": duration ?? NSNull() as Any]
    }

    func config(_ endpoint: Endpoint) throws -> ServeBenchConfig {
        let workload = try SessionWorkload(sessions: sessions, turns: turns, promptTokens: .parse(promptTokens), seed: seed)
        var cfg = ServeBenchConfig(endpoint: endpoint, workload: workload, mode: try loadMode)
        cfg.maxTokens = maxTokens
        cfg.temperature = temperature
        cfg.model = model
        cfg.duration = duration
        cfg.requests = requests ?? (duration == nil ? 100 : nil)
        cfg.warmup = warmup
        cfg.timeout = timeout
        cfg.slo = try goodput.map { try GoodputSLO.parse($0) }
        return cfg
    }

    /// One run with the live progress line on stderr (when it is a terminal).
    func runOnce(_ endpoint: Endpoint, label: String = "") throws -> ServeBenchResult {
        let runner = try ServeBenchRunner(config: config(endpoint))
        let live = isatty(2) != 0
        let result = runner.run { p in
            if live {
                let line = String(format: "\r%@[%6.1fs] %d done, %d errors, %d in flight, %.1f req/s   ", label,
                                  p.elapsedS, p.done, p.errors, p.inFlight, Double(p.done) / max(p.elapsedS, 1e-9))
                FileHandle.standardError.write(Data(line.utf8))
            }
        }
        if live { FileHandle.standardError.write(Data("\n".utf8)) }
        return result
    }

    func writeJSON(_ doc: [String: Any]) throws { try writeJSONDocument(doc, to: json) }

    func run() throws {
        if comparePolicies != nil { return try runComparison() }
        let endpoint: Endpoint = try url.map { try Endpoint.parse(url: $0) } ?? .unix(path: socket ?? "./switchyard.sock")
        let result = try runOnce(endpoint)
        let s = result.summary
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
        var doc = s.json
        doc["endpoint"] = "\(endpoint)"
        doc["mode"] = modeText
        doc["workload"] = workloadJSON
        try writeJSON(doc)
        if let path = plot {
            let svg = SVGPlot.report(title: "switchyard-bench serve: \(modeText)", runs: [("run", s, result.ttftOverTime)])
            try Data(svg.utf8).write(to: URL(fileURLWithPath: path))
        }
    }

    /// --compare-policies: one fresh server per policy, the same seeded workload against each, always stopped
    /// with SIGTERM (also when the run fails), results side by side.
    func runComparison() throws {
        guard let bin = serverBin ?? ServerProcess.siblingBinary("switchyard") else {
            throw ValidationError("no `switchyard` binary next to \(ServerProcess.executableDirectory() ?? "this one"); build it (swift build -c release) or pass --server-bin")
        }
        let extra = serverArgs.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        let dir = try ServerProcess.makeTempDirectory(prefix: "sy-bench-policies")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let quiet = json == "-"
        func say(_ s: String) {
            if quiet { FileHandle.standardError.write(Data((s + "\n").utf8)) } else { print(s) }
        }
        say("switchyard-bench serve --compare-policies: \(modeText), \(sessions) sessions × \(turns) turns, "
            + "prompt \(promptTokens) words, max_tokens \(maxTokens), seed \(seed); server: \(bin) serve \(serverArgs)")
        var results: [(policy: String, result: ServeBenchResult)] = []
        for p in policies {
            let sock = dir + "/\(p).sock"
            let server = try ServerProcess(binary: bin, serveArguments: ["--policy", p] + extra, socketPath: sock,
                                           logPath: dir + "/\(p).log")
            let r: ServeBenchResult
            do {
                defer { server.stop() }
                let t0 = monotonicNanos()
                try server.waitHealthy(timeout: healthTimeout)
                say(String(format: "%@: server healthy after %.1f s (pid %d)", p, Double(monotonicNanos() - t0) / 1e9, server.pid))
                r = try runOnce(.unix(path: sock), label: p + " ")
            }
            results.append((p, r))
        }
        func cell(_ v: Double?, _ f: String) -> String { v.map { String(format: f, $0) } ?? "n/a" }
        let rows: [(String, (BenchSummary) -> String)] = [
            ("TTFT p50 (ms)", { cell($0.ttft.p50Ms, "%.2f") }),
            ("TTFT p99 (ms)", { cell($0.ttft.p99Ms, "%.2f") }),
            ("TPOT p50 (ms)", { cell($0.tpot.p50Ms, "%.2f") }),
            ("E2E p50 (ms)", { cell($0.e2e.p50Ms, "%.2f") }),
            ("E2E p99 (ms)", { cell($0.e2e.p99Ms, "%.2f") }),
            ("requests/s", { cell($0.requestThroughput, "%.2f") }),
            ("output tok/s", { cell($0.outputTokenThroughput, "%.1f") }),
            ("session affinity", { cell($0.affinity, "%.3f") }),
            ("cache hit rate", { cell($0.cacheHitRate, "%.3f") }),
            ("errors", { "\($0.requests - $0.completed)" }),
            ("per worker", { s in s.perWorker.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ") }),
        ]
        let width = max(18, (policies.map(\.count).max() ?? 0) + 2)
        var table = "metric".padding(toLength: 18, withPad: " ", startingAt: 0)
        for (p, _) in results { table += " " + String(repeating: " ", count: max(0, width - p.count)) + p }
        for (name, f) in rows {
            table += "\n" + name.padding(toLength: 18, withPad: " ", startingAt: 0)
            for (_, r) in results {
                let v = f(r.summary)
                table += " " + String(repeating: " ", count: max(0, width - v.count)) + v
            }
        }
        say(table)
        var perPolicy: [String: Any] = [:]
        for (p, r) in results { perPolicy[p] = r.summary.json }
        try writeJSON(["mode": modeText, "workload": workloadJSON, "server": ["binary": bin, "args": serverArgs],
                       "policies": policies, "results": perPolicy])
        if let path = plot {
            let svg = SVGPlot.report(title: "switchyard-bench serve --compare-policies: \(modeText)",
                                     runs: results.map { ($0.policy, $0.result.summary, $0.result.ttftOverTime) })
            try Data(svg.utf8).write(to: URL(fileURLWithPath: path))
        }
    }
}
