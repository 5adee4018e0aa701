// End to end: the real `switchyard serve --engine echo` and the real `switchyard-bench serve` binary, a few
// seconds of load, and the JSON checked for every documented field and zero errors.
import Foundation
import Testing
@testable import BenchKit
@testable import ClientKit

/// Where the built executables are: $SWITCHYARD_BIN_DIR, else `.build/release` or `.build/debug` of the package
/// this file belongs to (found by walking up from #filePath to Package.swift), whichever has `name`, newest first.
func builtBinary(_ name: String, filePath: String = #filePath) throws -> String {
    if let dir = ProcessInfo.processInfo.environment["SWITCHYARD_BIN_DIR"], !dir.isEmpty {
        let p = dir + "/" + name
        guard FileManager.default.isExecutableFile(atPath: p) else {
            throw BenchError.server("SWITCHYARD_BIN_DIR=\(dir) has no executable \(name)")
        }
        return p
    }
    var dir = (filePath as NSString).deletingLastPathComponent
    while dir != "/" && !FileManager.default.fileExists(atPath: dir + "/Package.swift") {
        dir = (dir as NSString).deletingLastPathComponent
    }
    let candidates = [dir + "/.build/release/" + name, dir + "/.build/debug/" + name].filter {
        FileManager.default.isExecutableFile(atPath: $0)
    }
    func mtime(_ p: String) -> Date {
        ((try? FileManager.default.attributesOfItem(atPath: p))?[.modificationDate] as? Date) ?? .distantPast
    }
    guard let best = candidates.max(by: { mtime($0) < mtime($1) }) else {
        throw BenchError.server("no built \(name) under \(dir)/.build/{release,debug}; run `swift build` or set SWITCHYARD_BIN_DIR")
    }
    return best
}

/// Runs `binary args`, returns (exit status, stdout+stderr); SIGTERM after `timeout` seconds so a hung tool
/// fails the test instead of hanging it.
func runTool(_ binary: String, _ args: [String], timeout: Double = 120) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: binary)
    p.arguments = args
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let pid = p.processIdentifier
    let watchdog = DispatchWorkItem { kill(pid, SIGTERM) }
    DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: watchdog)
    defer { watchdog.cancel() }
    // Read until EOF (the pipe closes when the tool exits), then reap it.
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

@Suite(.serialized) struct EndToEndBenchTests {
    static let latencyKeys = ["count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms"]
    static let summaryKeys = [
        "requests", "completed", "duration_s", "ttft", "tpot", "itl", "e2e", "itl_definition", "tpot_definition",
        "request_throughput_rps", "output_token_throughput_tps", "goodput_rps", "errors", "errors_total",
        "requests_per_worker", "prompt_tokens", "output_tokens", "session_affinity", "cache_hit_rate",
    ]

    /// Checks one run's summary object: every field present, numbers where numbers belong, zero errors.
    func checkSummary(_ s: [String: Any], _ label: String) throws {
        for k in Self.summaryKeys { #expect(s[k] != nil, "\(label): missing \(k)") }
        for m in ["ttft", "tpot", "itl", "e2e"] {
            let o = try #require(s[m] as? [String: Any], "\(label): \(m) is not an object")
            for k in Self.latencyKeys { #expect(o[k] is NSNumber, "\(label): \(m).\(k) missing") }
            #expect(((o["count"] as? NSNumber)?.intValue ?? 0) > 0, "\(label): no \(m) samples")
        }
        let requests = (s["requests"] as? NSNumber)?.intValue ?? -1
        let completed = (s["completed"] as? NSNumber)?.intValue ?? -2
        #expect(requests > 0 && completed == requests, "\(label): \(completed) of \(requests) completed")
        #expect((s["errors_total"] as? NSNumber)?.intValue == 0, "\(label): errors \(s["errors"] ?? "?")")
        #expect((s["errors"] as? [String: Any])?.isEmpty == true)
        #expect(((s["output_tokens"] as? NSNumber)?.intValue ?? 0) > 0)
        #expect(((s["request_throughput_rps"] as? NSNumber)?.doubleValue ?? 0) > 0)
        // Every request named its worker; both workers of --workers 2 served some.
        let perWorker = try #require(s["requests_per_worker"] as? [String: Any])
        #expect(perWorker.values.compactMap { ($0 as? NSNumber)?.intValue }.reduce(0, +) == completed)
        #expect(perWorker.count == 2, "\(label): per worker \(perWorker)")
        let affinity = try #require((s["session_affinity"] as? NSNumber)?.doubleValue, "\(label): no affinity")
        #expect(affinity >= 0 && affinity <= 1)
        let hit = try #require((s["cache_hit_rate"] as? NSNumber)?.doubleValue, "\(label): no cache hit rate")
        #expect(hit >= 0 && hit <= 1)
    }

    @Test func benchAgainstEchoServer() throws {
        let serve = try builtBinary("switchyard")
        let bench = try builtBinary("switchyard-bench")
        let dir = try ServerProcess.makeTempDirectory(prefix: "sy-bench-e2e")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let server = try ServerProcess(binary: serve, serveArguments: ["--engine", "echo", "--workers", "2"],
                                       socketPath: dir + "/s.sock", logPath: dir + "/server.log")
        defer { server.stop() }
        try server.waitHealthy(timeout: 60)
        let jsonPath = dir + "/out.json", svgPath = dir + "/out.svg"
        let (rc, out) = try runTool(bench, [
            "serve", "--socket", server.socketPath, "--sessions", "6", "--turns", "3", "--prompt-tokens", "16:4",
            "--max-tokens", "8", "--concurrency", "4", "--duration", "3", "--warmup", "2", "--seed", "7",
            "--goodput", "ttft:10000,tpot:10000", "--json", jsonPath, "--plot", svgPath,
        ])
        #expect(rc == 0, "switchyard-bench exited \(rc): \(out)")
        #expect(out.contains("TTFT") && out.contains("session affinity"), "table missing: \(out)")
        let data = try #require(FileManager.default.contents(atPath: jsonPath), "no JSON written: \(out)")
        let doc = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        try checkSummary(doc, "serve")
        for k in ["endpoint", "mode", "workload"] { #expect(doc[k] != nil, "missing \(k)") }
        #expect(((doc["goodput_rps"] as? NSNumber)?.doubleValue ?? 0) > 0, "goodput with generous SLOs")
        let duration = (doc["duration_s"] as? NSNumber)?.doubleValue ?? 0
        #expect(duration >= 2 && duration < 30, "duration \(duration)")
        let svg = String(decoding: FileManager.default.contents(atPath: svgPath) ?? Data(), as: UTF8.self)
        #expect(svg.hasPrefix("<svg") && svg.contains("TTFT over time"))
        #expect(server.stop() == 0, "server exit status; log:\n\(server.logTail())")
    }

    @Test func comparePoliciesStartsAndStopsAServerPerPolicy() throws {
        let bench = try builtBinary("switchyard-bench")
        let serve = try builtBinary("switchyard")
        let dir = try ServerProcess.makeTempDirectory(prefix: "sy-bench-cmp")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let jsonPath = dir + "/cmp.json"
        let (rc, out) = try runTool(bench, [
            "serve", "--compare-policies", "consistent-hash,round-robin", "--server-bin", serve,
            "--server-args", "--workers 2 --engine echo", "--sessions", "5", "--turns", "3", "--prompt-tokens", "8",
            "--max-tokens", "4", "--concurrency", "5", "--requests", "30", "--warmup", "0", "--json", jsonPath,
        ])
        #expect(rc == 0, "switchyard-bench exited \(rc): \(out)")
        #expect(out.contains("consistent-hash") && out.contains("round-robin") && out.contains("cache hit rate"))
        let data = try #require(FileManager.default.contents(atPath: jsonPath), "no JSON written: \(out)")
        let doc = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(doc["policies"] as? [String] == ["consistent-hash", "round-robin"])
        let results = try #require(doc["results"] as? [String: Any])
        for p in ["consistent-hash", "round-robin"] {
            try checkSummary(try #require(results[p] as? [String: Any], "no results for \(p)"), p)
        }
        // Every server was stopped: no `switchyard serve` on this run's sockets is left.
        let left = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for pid in left where Int32(pid) != nil {
            let cmd = (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? ""
            #expect(!cmd.contains("sy-bench-policies"), "server still running: pid \(pid)")
        }
    }

    @Test func launcherReportsAServerThatCannotStart() throws {
        let serve = try builtBinary("switchyard")
        let dir = try ServerProcess.makeTempDirectory(prefix: "sy-bench-bad")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let server = try ServerProcess(binary: serve, serveArguments: ["--engine", "nonsense"],
                                       socketPath: dir + "/s.sock", logPath: dir + "/server.log")
        defer { server.stop() }
        #expect(throws: BenchError.self) { try server.waitHealthy(timeout: 30) }
    }
}
