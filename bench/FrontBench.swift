// switchyard-bench front: the front's added latency and throughput with the echo engine.
//   1. Round trip of a small non-streaming POST /v1/completions (1-character prompt, max_tokens 1) measured
//      three ways in the same run, interleaved in blocks so load changes on the machine hit all three alike:
//        raw      a raw Unix-socket echo (same request bytes, a blocking echo thread in this process);
//        raw-proc the same blocking echo in a separate process (`switchyard-bench echo-server`): the floor for
//                 any server process, since a switch to another process costs more than one to a thread of
//                 the client's own (both are reported; the targets' "added" keeps the thread as its floor);
//        inproc   the front in this process with the in-process EchoBackend (a thread, two eventfd wake-ups);
//        workers  the real system: `switchyard serve --engine echo --workers 1` (front process, worker
//                 process, shared-memory rings) started from the binary next to this one.
//      added = workers − raw (the targets: p50 ≤ 5 µs, p99 ≤ 25 µs); inproc − raw is reported too.
//      With --compare-args, a second real server (other `serve` arguments) joins the rotation: an A/B in the
//      same time window (e.g. --compare-args "--poll-spin-us 0"; with --compare-bin, another build of the binary).
//   2. The front's CPU per request without I/O (FrontCPUProbe: parse, JSON decode, response), stable where
//      the round trips are not.
//   3. Requests/s with 64 concurrent keep-alive connections (one client thread each), in-process and real.
// --client-cpu N pins the measuring client thread for step 1 (each: unpinned, then once per allowed CPU), since
// on this 2-vCPU VM where the client runs decides the latency mode (README, "Front").
// The load average is printed with the results: the numbers mean little on a busy machine.
import ArgumentParser
import BenchKit
import ClientKit
import CSwitchyardSys
import Foundation
import Front
import Glibc
import SysKit
import Worker

struct FrontBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "front",
        abstract: "Front round trip vs raw Unix-socket echo (in-process and through a real echo worker), and requests/s.")

    @Option(help: "Round trips per latency measurement (each of raw, inproc, workers).") var requests = 20000
    @Option(help: "Concurrent keep-alive connections for the throughput runs.") var connections = 64
    @Option(help: "Seconds for each throughput run.") var seconds = 3.0
    @Option(name: .customLong("server-bin"), help: "The switchyard binary (default: next to this one).") var serverBin: String?
    @Option(name: .customLong("server-args"), parsing: .unconditional,
            help: "Extra `switchyard serve` arguments for the real server, one string (e.g. \"--numa off\").")
    var serverArgs: String = ""
    @Option(name: .customLong("compare-args"), parsing: .unconditional,
            help: "Start a second real server with these extra `serve` arguments instead (e.g. \"--poll-spin-us 0\") and measure it interleaved with the first, so both see the same machine load.")
    var compareArgs: String?
    @Option(name: .customLong("compare-bin"), help: "The binary of the --compare-args server (default: the same; e.g. a build of the previous commit, for before/after).")
    var compareBin: String?
    @Flag(name: .customLong("inproc-only"), help: "Skip the measurement through the real server.") var inprocOnly = false
    @Flag(name: .customLong("cpu-only"), help: "Only the CPU probes (front and worker request path without I/O).")
    var cpuOnly = false
    @Option(name: .customLong("cpu-iterations"), help: "Iterations of each CPU probe (with --cpu-only; fewer for a run under callgrind, whose instruction counts per request do not drift with the host).")
    var cpuIterations: Int = 200_000
    @Flag(help: "Only the latency breakdown: one client's round trips through a traced server (SWITCHYARD_TRACE), split into the stages of the request path (--client-cpu N pins that client; each pins it to the last allowed CPU).")
    var breakdown = false
    @Option(help: "With --breakdown: also write every traced round trip's stages (ns, one line each, in the printed order) to PATH, to see which stage makes the slow ones slow.")
    var breakdownRows: String?
    @Option(help: "Write JSON results to PATH ('-' for stdout).") var json: String?
    @Option(name: .customLong("client-cpu"),
            help: "Where the measuring client thread runs: any (unpinned, the scheduler decides), a CPU number, or each (unpinned, then once pinned to every allowed CPU). The server pins its worker and its front to different CPUs, and a client beside the spinning worker measures slower on this VM (README).")
    var clientCPU: String = "any"
    @Flag(name: .customLong("one-client-thread"),
          help: "Measure every path's round trips from one client thread (the bench before 2026-11-28) instead of one client thread per path. A thread that alternates between five servers looks 'wide' to the scheduler's wake-up placement (wakee flips), which then often leaves it on another CPU than the server that wakes it; a real client talks to one server.")
    var oneClientThread = false

    /// The smallest request the echo worker can answer: 1-character prompt, one token.
    static let probeBody = #"{"prompt":"h","max_tokens":1}"#
    static let probeRequest = Array("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: \(probeBody.utf8.count)\r\n\r\n\(probeBody)".utf8)

    /// `--cpu-only`: the probes alone, best of 5 rounds each (seconds, not minutes: for before/after checks).
    func runCPUProbes() throws {
        let req = Self.probeRequest
        let iterations = max(5, cpuIterations)
        let cpu = try FrontCPUProbe.run(request: req, iterations: iterations)
        let workerCPU = try WorkerCPUProbe.run(prompt: "h", iterations: iterations)
        let total = cpu.parseNs + cpu.decodeNs + cpu.responseNs + cpu.recordsNs + workerCPU.requestNs
        print(String(format: "front: parse %.0f ns, JSON decode %.0f ns, completion response %.0f ns, records %.0f ns; worker: request %.0f ns; sum %.0f ns (one streamed delta %.0f ns)",
                     cpu.parseNs, cpu.decodeNs, cpu.responseNs, cpu.recordsNs, workerCPU.requestNs, total, cpu.streamDeltaNs))
        try writeJSONDocument([
            "bench": "front-cpu",
            "front_cpu_parse_ns": cpu.parseNs, "front_cpu_decode_ns": cpu.decodeNs,
            "front_cpu_response_ns": cpu.responseNs, "front_cpu_records_ns": cpu.recordsNs,
            "front_cpu_stream_delta_ns": cpu.streamDeltaNs, "worker_cpu_request_ns": workerCPU.requestNs,
        ], to: json)
    }

    func run() throws {
        if cpuOnly { return try runCPUProbes() }
        if breakdown { return try runBreakdown() }
        let dir = String(cString: mkdtemp(strdup("/tmp/sy-front-bench-XXXXXX")))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The smallest request the echo worker can answer: 1-character prompt, one token.
        let body = Self.probeBody, req = Self.probeRequest

        // Raw echo baseline: one connection, a blocking echo thread.
        let rawPath = dir + "/raw.sock"
        let rawFD = try listenUnixSocket(rawPath, backlog: 16)
        Thread {
            let c = accept(rawFD, nil, nil)
            echoUntilClosed(c, cpu: rawEchoCPU)
            close(c)
        }.start()
        let raw = try BenchClient(path: rawPath)

        // The same echo in its own process.
        let procPath = dir + "/raw-proc.sock"
        let echoProc = try EchoServerCommand.spawn(socketPath: procPath)
        defer { echoProc.terminate(); echoProc.waitUntilExit() }
        let rawProc = try BenchClient.connectRetrying(path: procPath, timeout: 10)

        // The front in this process.
        var cfg = FrontConfig()
        cfg.socketPath = dir + "/front.sock"
        cfg.handleSignals = false
        cfg.useSystemdSockets = false
        cfg.log = { _, _ in }
        let backend = EchoBackend()
        let server = try FrontServer(config: cfg, backend: backend)
        let done = DispatchSemaphore(value: 0)
        Thread { try? server.run(); done.signal() }.start()
        let inprocPath = cfg.socketPath ?? ""
        let fc = try BenchClient(path: inprocPath)
        defer {
            fc.close()
            server.requestShutdown()
            done.wait()
            backend.stop()
        }

        // The real system.
        var real: ServerProcess?
        var wc: BenchClient?
        if !inprocOnly {
            guard let bin = serverBin ?? ServerProcess.siblingBinary("switchyard") else {
                throw FrontBenchError("no switchyard binary next to this one; build it or pass --server-bin (or --inproc-only)")
            }
            let p = try ServerProcess(binary: bin, serveArguments: ["--engine", "echo", "--workers", "1", "--log-level", "warn"]
                                          + serverArgs.split(separator: " ").map(String.init),
                                      socketPath: dir + "/workers.sock", logPath: dir + "/server.log")
            real = p
            try p.waitHealthy(timeout: 60)
            wc = try BenchClient(path: p.socketPath)
        }
        defer {
            wc?.close()
            real?.stop()
        }
        var other: ServerProcess?
        var oc: BenchClient?
        if let compareArgs, !inprocOnly, let bin = compareBin ?? serverBin ?? ServerProcess.siblingBinary("switchyard") {
            let p = try ServerProcess(binary: bin, serveArguments: ["--engine", "echo", "--workers", "1", "--log-level", "warn"]
                                          + compareArgs.split(separator: " ").map(String.init),
                                      socketPath: dir + "/compare.sock", logPath: dir + "/compare.log")
            other = p
            try p.waitHealthy(timeout: 60)
            oc = try BenchClient(path: p.socketPath)
        }
        defer {
            oc?.close()
            other?.stop()
        }

        // Warm-up (also checks every path answers 200).
        for _ in 0..<1000 {
            try raw.send(req); try raw.readExactly(req.count)
            try rawProc.send(req); try rawProc.readExactly(req.count)
            try fc.send(req); try fc.readResponse(expect200: true)
            if let wc { try wc.send(req); try wc.readResponse(expect200: true) }
            if let oc { try oc.send(req); try oc.readResponse(expect200: true) }
        }
        let paths = LatencyPaths(raw: raw, rawProc: rawProc, inproc: fc, workers: wc, compare: oc, request: req)
        let placements = try clientPlacements()
        let main = try latencyRun(paths, pin: placements.first ?? nil)
        var pinned: [LatencyRun] = []
        for cpu in placements.dropFirst() { pinned.append(try latencyRun(paths, pin: cpu)) }
        let rawLat = main.raw, procLat = main.rawProc, inLat = main.inproc, wLat = main.workers, oLat = main.compare
        let clientCPUs = main.clientCPUs
        let block = Self.block
        // GET /health never reaches a backend: the front's own cost without the handoff.
        let health = Array("GET /health HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
        var healthLat: [UInt64] = []
        try measure(requests, into: &healthLat) { try fc.send(health); try fc.readResponse() }
        raw.close()
        close(rawFD)
        rawProc.close()

        // The front's own CPU per request without I/O (stable where the round trips are not).
        let cpu = try FrontCPUProbe.run(request: req, iterations: 200_000)
        let workerCPU = try WorkerCPUProbe.run(prompt: "h", iterations: 200_000)

        // Throughput.
        let inRPS = throughput(path: inprocPath, req: req)
        let wRPS = real.map { throughput(path: $0.socketPath, req: req) }
        let oRPS = other.map { throughput(path: $0.socketPath, req: req) }

        let r = pct(rawLat), rp = pct(procLat), i = pct(inLat), h = pct(healthLat)
        let w = wLat.isEmpty ? nil : pct(wLat)
        var load = [Double](repeating: 0, count: 3)
        _ = getloadavg(&load, 3)
        var result: [String: Any] = [
            "bench": "front",
            "requests": requests,
            "request": "POST /v1/completions " + body,
            "server_args": "--engine echo --workers 1 " + serverArgs,
            "load_average": load,
            "cpus_online": sysconf(Int32(_SC_NPROCESSORS_ONLN)),
            "raw_rtt_p50_ns": r.p50, "raw_rtt_p99_ns": r.p99,
            "raw_process_rtt_p50_ns": rp.p50, "raw_process_rtt_p99_ns": rp.p99,
            "raw_same_cpu_share": Double(main.rawSameCPU) / Double(max(1, rawLat.count)),
            "steal_share": main.steal ?? -1,
            "front_inproc_rtt_p50_ns": i.p50, "front_inproc_rtt_p99_ns": i.p99,
            "inproc_added_p50_ns": Int64(i.p50) - Int64(r.p50), "inproc_added_p99_ns": Int64(i.p99) - Int64(r.p99),
            "front_health_p50_ns": h.p50, "front_health_p99_ns": h.p99,
            "front_cpu_parse_ns": cpu.parseNs, "front_cpu_decode_ns": cpu.decodeNs,
            "front_cpu_response_ns": cpu.responseNs, "front_cpu_health_response_ns": cpu.healthNs,
            "front_cpu_stream_delta_ns": cpu.streamDeltaNs,
            "front_cpu_records_ns": cpu.recordsNs,
            "worker_cpu_request_ns": workerCPU.requestNs,
            "connections": connections,
            "front_inproc_requests_per_second": inRPS,
            "targets": ["added_p50_ns": 5000, "added_p99_ns": 25000],
        ]
        if let w, let wRPS {
            result["front_workers_rtt_p50_ns"] = w.p50
            result["front_workers_rtt_p99_ns"] = w.p99
            result["added_p50_ns"] = Int64(w.p50) - Int64(r.p50)
            result["added_p99_ns"] = Int64(w.p99) - Int64(r.p99)
            result["added_vs_process_p50_ns"] = Int64(w.p50) - Int64(rp.p50)
            result["added_vs_process_p99_ns"] = Int64(w.p99) - Int64(rp.p99)
            result["front_workers_requests_per_second"] = wRPS
            result["front_workers_client_cpu_share"] = Dictionary(uniqueKeysWithValues: clientCPUs.indices.filter { clientCPUs[$0] > 0 }
                .map { (String($0), Double(clientCPUs[$0]) / Double(max(1, wLat.count))) })
        }
        let o = oLat.isEmpty ? nil : pct(oLat)
        if let o, let oRPS, let compareArgs {
            result["compare_server_args"] = "--engine echo --workers 1 " + compareArgs
            if let compareBin { result["compare_server_bin"] = compareBin }
            result["compare_rtt_p50_ns"] = o.p50
            result["compare_rtt_p99_ns"] = o.p99
            result["compare_added_p50_ns"] = Int64(o.p50) - Int64(r.p50)
            result["compare_added_p99_ns"] = Int64(o.p99) - Int64(r.p99)
            result["compare_requests_per_second"] = oRPS
        }
        if let pin = main.pin { result["client_cpu"] = pin }
        if !pinned.isEmpty { result["placements"] = pinned.map(placementJSON) }
        let out = json == "-" ? { (s: String) in FileHandle.standardError.write(Data((s + "\n").utf8)) } : { print($0) }
        out(String(format: "load average %.2f %.2f %.2f on %d cpus (other processes share the machine)", load[0], load[1], load[2],
                   Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))))
        out("round trip, \(requests) each, interleaved in blocks of \(block): POST /v1/completions \(body)"
            + (main.pin.map { ", client pinned to cpu \($0)" } ?? "")
            + (main.steal.map { String(format: "; steal %.1f %% of CPU time while measuring", $0 * 100) } ?? ""))
        out(String(format: "raw echo (thread)   p50 %8.1f us  p99 %8.1f us  (echo thread on the client's CPU in %d %% of them)",
                   us(r.p50), us(r.p99), main.rawSameCPU * 100 / max(1, rawLat.count)))
        out(String(format: "raw echo (process)  p50 %8.1f us  p99 %8.1f us", us(rp.p50), us(rp.p99)))
        out(String(format: "front in-process    p50 %8.1f us  p99 %8.1f us  (added p50 %.1f us, p99 %.1f us)",
                   us(i.p50), us(i.p99), us(i.p50) - us(r.p50), us(i.p99) - us(r.p99)))
        if let w {
            out(String(format: "front + worker      p50 %8.1f us  p99 %8.1f us  (added p50 %.1f us, p99 %.1f us; targets 5 / 25 us)",
                       us(w.p50), us(w.p99), us(w.p50) - us(r.p50), us(w.p99) - us(r.p99)))
            out(String(format: "                    added over the echo process: p50 %.1f us, p99 %.1f us",
                       us(w.p50) - us(rp.p50), us(w.p99) - us(rp.p99)))
            out("                    client ran on " + clientCPUs.indices.filter { clientCPUs[$0] > 0 }
                .map { "cpu \($0) \(clientCPUs[$0] * 100 / max(1, wLat.count)) %" }.joined(separator: ", "))
        }
        if let o, let oRPS, let compareArgs {
            out(String(format: "compare server      p50 %8.1f us  p99 %8.1f us  (added p50 %.1f us, p99 %.1f us), %.0f requests/s: ",
                       us(o.p50), us(o.p99), us(o.p50) - us(r.p50), us(o.p99) - us(r.p99), oRPS)
                + [compareBin, compareArgs].compactMap { $0 }.joined(separator: " "))
        }
        for run in pinned {
            let r = pct(run.raw), rp = pct(run.rawProc), w = pct(run.workers)
            out(String(format: "client pinned to cpu %d: raw echo p50 %.1f us (on the client's CPU %d %%; process %.1f us), front + worker p50 %.1f us p99 %.1f us (added p50 %.1f us, p99 %.1f us; steal %.1f %%)",
                       run.pin ?? -1, us(r.p50), run.rawSameCPU * 100 / max(1, run.raw.count), us(rp.p50), us(w.p50), us(w.p99), us(w.p50) - us(r.p50), us(w.p99) - us(r.p99),
                       (run.steal ?? -0.01) * 100)
                + (run.compare.isEmpty ? "" : String(format: "; compare server added p50 %.1f us, p99 %.1f us",
                                                     us(pct(run.compare).p50) - us(r.p50), us(pct(run.compare).p99) - us(r.p99))))
        }
        out(String(format: "GET /health         p50 %8.1f us  p99 %8.1f us  (front alone, no backend handoff)", us(h.p50), us(h.p99)))
        out(String(format: "front CPU per request, no I/O: parse %.0f ns, JSON decode %.0f ns, completion response %.0f ns (health response %.0f ns, one streamed delta %.0f ns), records (submit, delta, done: encode + decode) %.0f ns",
                   cpu.parseNs, cpu.decodeNs, cpu.responseNs, cpu.healthNs, cpu.streamDeltaNs, cpu.recordsNs))
        out(String(format: "worker CPU per request, no I/O: submit decode + admit + step + records out %.0f ns (echo engine)",
                   workerCPU.requestNs))
        out(String(format: "%d keep-alive connections: in-process %.0f requests/s", connections, inRPS)
            + (wRPS.map { String(format: ", front + worker %.0f requests/s", $0) } ?? ""))
        try writeJSONDocument(result, to: json)
    }

    private func us(_ ns: UInt64) -> Double { Double(ns) / 1000 }

    /// Round trips per path between switches to the next path.
    static let block = 500

    /// The connections one latency measurement rotates over (nil: the path is not measured).
    struct LatencyPaths {
        var raw: BenchClient, rawProc: BenchClient, inproc: BenchClient
        var workers: BenchClient?, compare: BenchClient?
        var request: [UInt8]
    }

    /// One latency measurement: every path's round trips (ns), and the CPUs the client ran on after its round
    /// trips through the worker (index = CPU).
    struct LatencyRun {
        var pin: Int?
        var raw: [UInt64] = [], rawProc: [UInt64] = [], inproc: [UInt64] = [], workers: [UInt64] = [], compare: [UInt64] = []
        var clientCPUs = [Int](repeating: 0, count: 64)
        /// Raw echo round trips whose echo thread answered on the client's CPU (a same-CPU hand-off, a few µs
        /// faster than one across CPUs on this VM: the baseline moves with where the scheduler puts the pair).
        var rawSameCPU = 0
        /// Share of the machine's CPU time the hypervisor gave to others while this run measured (the steal
        /// column of /proc/stat over the run; nil where it cannot be read). A vCPU that waits for its host
        /// CPU stretches every stage of a round trip: a run with steal is a run on a slower machine.
        var steal: Double?
    }

    /// The machine's steal and total CPU time so far, in ticks (the aggregate `cpu` line of /proc/stat).
    static func cpuTicks() -> (steal: UInt64, total: UInt64)? {
        guard let f = fopen("/proc/stat", "r") else { return nil }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 512)
        guard fgets(&line, Int32(line.count), f) != nil else { return nil }
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let fields = text.split(separator: " ").dropFirst().compactMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        // user nice system idle iowait irq softirq steal [guest guest_nice, already counted in user/nice]
        guard fields.count >= 8 else { return nil }
        return (fields[7], fields[0..<8].reduce(0, +))
    }

    /// `--client-cpu`: nil = unpinned. `each` = unpinned first, then every CPU this process may run on.
    func clientPlacements() throws -> [Int?] {
        switch clientCPU {
        case "any": return [nil]
        case "each": return [nil] + (try CPUAffinity.get()).map { Optional($0) }
        default:
            guard let n = Int(clientCPU), n >= 0, (try CPUAffinity.get()).contains(n) else {
                throw FrontBenchError("--client-cpu must be any, each, or a CPU this process may run on (got \(clientCPU))")
            }
            return [n]
        }
    }

    /// `requests` round trips per path in blocks of `block`, rotating raw → raw process → in-process →
    /// workers (→ compare), so load changes on the machine hit every path alike. With `pin`, the calling
    /// thread (the client) runs on that CPU only for the measurement; the servers and echo processes keep
    /// their own placement.
    func latencyRun(_ p: LatencyPaths, pin: Int?) throws -> LatencyRun {
        oneClientThread ? try latencyRunOneThread(p, pin: pin) : try latencyRunThreadPerPath(p, pin: pin)
    }

    /// One path's client thread for `latencyRunThreadPerPath`: its connection, its round trips, where it ran.
    private final class PathClient: @unchecked Sendable {
        let client: BenchClient
        let path: WritableKeyPath<LatencyRun, [UInt64]>
        let request: [UInt8]
        let pin: Int?
        /// The raw echo paths (answer = the request's bytes) and the thread-echo one (its CPU is compared).
        let echoes: Bool, rawThread: Bool
        var lat: [UInt64] = []
        var rawSameCPU = 0
        var cpus = [Int](repeating: 0, count: 64)
        var error: Error?
        /// Posted when it is this thread's turn (a block of round trips, or 0: stop).
        let turn = DispatchSemaphore(value: 0)
        var blockSize = 0
        init(_ client: BenchClient, _ path: WritableKeyPath<LatencyRun, [UInt64]>, request: [UInt8], pin: Int?) {
            self.client = client; self.path = path; self.request = request; self.pin = pin
            echoes = path == \LatencyRun.raw || path == \LatencyRun.rawProc
            rawThread = path == \LatencyRun.raw
        }
    }

    /// Like `latencyRunOneThread`, with the same blocks in the same rotation, but each path is measured by a
    /// client thread of its own that sleeps while the other paths take their turn (the baton passes outside
    /// the timed round trips). So each client talks to one server only, as a real client does.
    func latencyRunThreadPerPath(_ p: LatencyPaths, pin: Int?) throws -> LatencyRun {
        var run = LatencyRun(pin: pin)
        var clients = [PathClient(p.raw, \.raw, request: p.request, pin: pin),
                       PathClient(p.rawProc, \.rawProc, request: p.request, pin: pin),
                       PathClient(p.inproc, \.inproc, request: p.request, pin: pin)]
        if let wc = p.workers { clients.append(PathClient(wc, \.workers, request: p.request, pin: pin)) }
        if let oc = p.compare { clients.append(PathClient(oc, \.compare, request: p.request, pin: pin)) }
        let done = DispatchSemaphore(value: 0)
        let n = requests
        for pc in clients {
            pc.lat.reserveCapacity(n)
            let t = Thread {
                if let cpu = pc.pin { try? CPUAffinity.set([cpu]) }
                while true {
                    pc.turn.wait()
                    let k = pc.blockSize
                    if k == 0 { break }
                    if pc.error == nil {
                        do {
                            for _ in 0..<k {
                                let t0 = monotonicNanos()
                                try pc.client.send(pc.request)
                                if pc.echoes {
                                    try pc.client.readExactly(pc.request.count)
                                } else {
                                    try pc.client.readResponse()
                                }
                                pc.lat.append(monotonicNanos() - t0)
                                let cpu = Int(sy_current_cpu())
                                if pc.cpus.indices.contains(cpu) { pc.cpus[cpu] += 1 }
                                if pc.rawThread && sy_load_relaxed_u32(rawEchoCPU) == UInt32(truncatingIfNeeded: cpu) {
                                    pc.rawSameCPU += 1
                                }
                            }
                        } catch { pc.error = error }
                    }
                    done.signal()
                }
                done.signal()
            }
            t.start()
        }
        let ticks0 = Self.cpuTicks()
        var left = requests
        while left > 0 {
            let k = min(Self.block, left)
            for pc in clients {
                pc.blockSize = k
                pc.turn.signal()
                done.wait()
            }
            left -= k
        }
        for pc in clients { pc.blockSize = 0; pc.turn.signal(); done.wait() }
        for pc in clients {
            if let e = pc.error { throw e }
            run[keyPath: pc.path] = pc.lat
            if pc.rawThread { run.rawSameCPU = pc.rawSameCPU }
            if pc.path == \LatencyRun.workers { run.clientCPUs = pc.cpus }
        }
        if let a = ticks0, let b = Self.cpuTicks(), b.total > a.total, b.steal >= a.steal {
            run.steal = Double(b.steal - a.steal) / Double(b.total - a.total)
        }
        return run
    }

    /// Every path's round trips from the calling thread (`--one-client-thread`).
    func latencyRunOneThread(_ p: LatencyPaths, pin: Int?) throws -> LatencyRun {
        var run = LatencyRun(pin: pin)
        let saved = try CPUAffinity.get()
        if let pin { try CPUAffinity.set([pin]) }
        defer { if pin != nil { try? CPUAffinity.set(saved) } }
        let req = p.request
        for lat in [\LatencyRun.raw, \.rawProc, \.inproc, \.workers, \.compare] { run[keyPath: lat].reserveCapacity(requests) }
        // Where this client thread ran after each round trip through the worker (the server pins its worker and
        // its front to different CPUs; a client beside the worker measures slower, see the README).
        var cpus = run.clientCPUs
        let countClientCPU = {
            let cpu = Int(sy_current_cpu())
            if cpus.indices.contains(cpu) { cpus[cpu] += 1 }
        }
        let ticks0 = Self.cpuTicks()
        var left = requests
        while left > 0 {
            let n = min(Self.block, left)
            try measure(n, into: &run.raw, after: {
                if sy_load_relaxed_u32(rawEchoCPU) == UInt32(bitPattern: sy_current_cpu()) { run.rawSameCPU += 1 }
            }) { try p.raw.send(req); try p.raw.readExactly(req.count) }
            try measure(n, into: &run.rawProc) { try p.rawProc.send(req); try p.rawProc.readExactly(req.count) }
            try measure(n, into: &run.inproc) { try p.inproc.send(req); try p.inproc.readResponse() }
            if let wc = p.workers { try measure(n, into: &run.workers, after: countClientCPU) { try wc.send(req); try wc.readResponse() } }
            if let oc = p.compare { try measure(n, into: &run.compare) { try oc.send(req); try oc.readResponse() } }
            left -= n
        }
        run.clientCPUs = cpus
        if let a = ticks0, let b = Self.cpuTicks(), b.total > a.total, b.steal >= a.steal {
            run.steal = Double(b.steal - a.steal) / Double(b.total - a.total)
        }
        return run
    }

    /// Appends `n` timed runs of `body` (ns) to `lat`.
    /// Appends `n` timed runs of `body` (ns) to `lat`; `after` runs after each, outside the timed part.
    private func measure(_ n: Int, into lat: inout [UInt64], after: () -> Void = {}, _ body: () throws -> Void) throws {
        for _ in 0..<n {
            let t = monotonicNanos()
            try body()
            lat.append(monotonicNanos() - t)
            after()
        }
    }

    /// One pinned placement's percentiles (ns) for the JSON document.
    private func placementJSON(_ run: LatencyRun) -> [String: Any] {
        let r = pct(run.raw), rp = pct(run.rawProc), i = pct(run.inproc)
        var d: [String: Any] = [
            "client_cpu": run.pin ?? -1,
            "raw_rtt_p50_ns": r.p50, "raw_rtt_p99_ns": r.p99,
            "raw_process_rtt_p50_ns": rp.p50, "raw_process_rtt_p99_ns": rp.p99,
            "front_inproc_rtt_p50_ns": i.p50, "front_inproc_rtt_p99_ns": i.p99,
            "raw_same_cpu_share": Double(run.rawSameCPU) / Double(max(1, run.raw.count)),
        ]
        if let st = run.steal { d["steal_share"] = st }
        if !run.workers.isEmpty {
            let w = pct(run.workers)
            d["front_workers_rtt_p50_ns"] = w.p50
            d["front_workers_rtt_p99_ns"] = w.p99
            d["added_p50_ns"] = Int64(w.p50) - Int64(r.p50)
            d["added_p99_ns"] = Int64(w.p99) - Int64(r.p99)
        }
        if !run.compare.isEmpty {
            let o = pct(run.compare)
            d["compare_added_p50_ns"] = Int64(o.p50) - Int64(r.p50)
            d["compare_added_p99_ns"] = Int64(o.p99) - Int64(r.p99)
        }
        return d
    }

    private func pct(_ v: [UInt64]) -> (p50: UInt64, p99: UInt64) {
        guard !v.isEmpty else { return (0, 0) }
        let s = v.sorted()
        return (nearestRank(s, percent: 50), nearestRank(s, percent: 99))
    }

    /// Requests/s over `seconds` with `connections` keep-alive connections, one thread each.
    private func throughput(path: String, req: [UInt8]) -> Double {
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: connections)
        counts.initialize(repeating: 0, count: connections)
        defer { counts.deallocate() }
        let group = DispatchGroup()
        let deadline = monotonicNanos() + UInt64(seconds * 1e9)
        let t0 = monotonicNanos()
        for i in 0..<connections {
            group.enter()
            // Each thread writes only its own slot; the main thread reads them after group.wait().
            nonisolated(unsafe) let slot = counts + i
            Thread {
                defer { group.leave() }
                guard let c = try? BenchClient(path: path) else { return }
                while monotonicNanos() < deadline {
                    do { try c.send(req); try c.readResponse() } catch { break }
                    slot.pointee += 1
                }
                c.close()
            }.start()
        }
        group.wait()
        let elapsed = Double(monotonicNanos() - t0) / 1e9
        return Double((0..<connections).reduce(0) { $0 + counts[$1] }) / elapsed
    }
}

/// The value at rank count × percent / 100 of `sorted` (ascending, not empty).
func nearestRank<T>(_ sorted: [T], percent: Int) -> T { sorted[min(sorted.count - 1, sorted.count * percent / 100)] }

struct FrontBenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Blocking Unix-socket client that reads Content-Length responses.
final class BenchClient {
    let fd: Int32
    private var buf = [UInt8](repeating: 0, count: 65536)
    private var have = 0

    init(path: String) throws {
        var addr = try unixSocketAddress(path)
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 { Glibc.close(fd); throw FrontBenchError("connect \(path): \(errno)") }
    }

    func close() { Glibc.close(fd) }

    func send(_ b: [UInt8]) throws {
        var off = 0
        while off < b.count {
            let n = b[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { throw FrontBenchError("send failed") }
            off += n
        }
    }

    private func fill() throws {
        if have == buf.count { throw FrontBenchError("response too large") }
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + have, $0.count - have, 0) }
        if n <= 0 { throw FrontBenchError("connection closed") }
        have += n
    }

    private func consume(_ n: Int) {
        buf.withUnsafeMutableBytes { p in
            if have > n { memmove(p.baseAddress!, p.baseAddress! + n, have - n) }
        }
        have -= n
    }

    func readExactly(_ n: Int) throws {
        while have < n { try fill() }
        consume(n)
    }

    /// One response with Content-Length; with `expect200`, anything but "HTTP/1.1 200" throws.
    func readResponse(expect200: Bool = false) throws {
        while true {
            if let end = headerEnd() {
                if expect200 && !(end > 12 && buf[9] == 50 && buf[10] == 48 && buf[11] == 48) {
                    throw FrontBenchError("expected 200, got: " + String(decoding: buf[0..<min(end, 200)], as: UTF8.self))
                }
                guard let len = contentLength(end) else { throw FrontBenchError("no content-length") }
                while have < end + len { try fill() }
                consume(end + len)
                return
            }
            try fill()
        }
    }

    /// Content-Length from the header block buf[0..<end], matched on bytes (no String work in the timed loop).
    private func contentLength(_ end: Int) -> Int? {
        let key = Array("\r\ncontent-length:".utf8)
        var i = 0
        while i + key.count <= end {
            var match = true
            for k in 0..<key.count {
                var c = buf[i + k]
                if c >= 65 && c <= 90 { c += 32 }
                if c != key[k] { match = false; break }
            }
            if match {
                var j = i + key.count
                while j < end && buf[j] == 32 { j += 1 }
                var v = 0
                var digits = 0
                while j < end && buf[j] >= 48 && buf[j] <= 57 { v = v * 10 + Int(buf[j] - 48); j += 1; digits += 1 }
                return digits > 0 ? v : nil
            }
            i += 1
        }
        return nil
    }

    private func headerEnd() -> Int? {
        if have < 4 { return nil }
        for i in 0...(have - 4) where buf[i] == 13 && buf[i + 1] == 10 && buf[i + 2] == 13 && buf[i + 3] == 10 { return i + 4 }
        return nil
    }
}

extension BenchClient {
    /// Connects, retrying while the server is still starting (ENOENT / ECONNREFUSED) until `timeout` seconds.
    static func connectRetrying(path: String, timeout: Double) throws -> BenchClient {
        let deadline = monotonicNanos() + UInt64(timeout * 1e9)
        while true {
            do { return try BenchClient(path: path) } catch {
                if monotonicNanos() >= deadline { throw error }
                usleep(10_000)
            }
        }
    }
}

/// `switchyard-bench echo-server --socket PATH`: the front bench's raw echo in a process of its own (blocking
/// accept, then read/write until the peer closes; one connection at a time). Exits when its parent does.
struct EchoServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "echo-server", abstract: "Blocking Unix-socket echo (the front bench's process floor).",
        shouldDisplay: false)

    @Option(help: "Socket path to listen on.") var socket: String

    func run() throws {
        _ = sy_set_parent_death_signal(SIGTERM)
        let fd = try listenUnixSocket(socket, backlog: 8)
        while true {
            let c = accept(fd, nil, nil)
            if c < 0 { if errno == EINTR { continue }; throw FrontBenchError("echo-server: accept failed (errno \(errno))") }
            echoUntilClosed(c)
            close(c)
        }
    }

    /// Starts `switchyard-bench echo-server` (this executable) listening on `socketPath`.
    static func spawn(socketPath: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        p.arguments = ["echo-server", "--socket", socketPath]
        try p.run()
        return p
    }
}

/// A Unix-socket address for `path`; refused when the path does not fit in sun_path.
func unixSocketAddress(_ path: String) throws -> sockaddr_un {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw FrontBenchError("socket path too long: \(path)") }
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
        for (i, b) in bytes.enumerated() { raw[i] = b }
        raw[bytes.count] = 0
    }
    return addr
}

/// A listening Unix socket at `path` (a stale file there is removed first).
func listenUnixSocket(_ path: String, backlog: Int32) throws -> Int32 {
    var addr = try unixSocketAddress(path)
    unlink(path)
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw FrontBenchError("socket: errno \(errno)") }
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    if rc != 0 || listen(fd, backlog) != 0 {
        let e = errno
        close(fd)
        throw FrontBenchError("bind/listen \(path): errno \(e)")
    }
    return fd
}

/// The CPU the raw echo thread answered the last request on (written by it before it answers, read by the
/// client after the answer arrived: the socket's write and read order the two).
nonisolated(unsafe) let rawEchoCPU: UnsafeMutablePointer<UInt32> = {
    let p = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    p.initialize(to: .max)
    return p
}()

/// Echoes everything read from `c` back to it until the peer closes (short writes are continued); `cpu`,
/// when given, gets the CPU each answer was written from.
func echoUntilClosed(_ c: Int32, cpu: UnsafeMutablePointer<UInt32>? = nil) {
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(c, &buf, buf.count)
        if n <= 0 { return }
        if let cpu { sy_store_relaxed_u32(cpu, UInt32(bitPattern: sy_current_cpu())) }
        var off = 0
        while off < n {
            let w = buf.withUnsafeBytes { write(c, $0.baseAddress! + off, n - off) }
            if w <= 0 { return }
            off += w
        }
    }
}

// MARK: latency breakdown

extension FrontBench {
    /// The stages of one round trip, from the client's timestamps and the server's trace points
    /// (sy_trace.h): (name, JSON key, from, to). Client points: -1 before the write, -2 after the read.
    static let breakdownStages: [(String, String, Int, Int)] = [
        ("client write -> front takes the bytes", "client_to_front", -1, Int(SY_TP_FRONT_RECV.rawValue)),
        ("front: HTTP parse", "front_parse", Int(SY_TP_FRONT_RECV.rawValue), Int(SY_TP_FRONT_PARSED.rawValue)),
        ("front: route lookup + JSON decode", "front_decode", Int(SY_TP_FRONT_PARSED.rawValue), Int(SY_TP_FRONT_DECODED.rawValue)),
        ("front: route + submit record into the ring", "front_submit", Int(SY_TP_FRONT_DECODED.rawValue), Int(SY_TP_FRONT_SUBMITTED.rawValue)),
        ("ring: publish, worker sees the submit", "ring_to_worker", Int(SY_TP_FRONT_SUBMITTED.rawValue), Int(SY_TP_WORKER_SEEN.rawValue)),
        ("worker: admit", "worker_admit", Int(SY_TP_WORKER_SEEN.rawValue), Int(SY_TP_WORKER_ADMITTED.rawValue)),
        ("worker: step (prefill, sample, delta + done)", "worker_step", Int(SY_TP_WORKER_ADMITTED.rawValue), Int(SY_TP_WORKER_DONE.rawValue)),
        ("worker: done record reserved -> committed", "worker_commit", Int(SY_TP_WORKER_DONE.rawValue), Int(SY_TP_WORKER_COMMITTED.rawValue)),
        ("ring: publish, front sees the first record", "ring_to_front", Int(SY_TP_WORKER_COMMITTED.rawValue), Int(SY_TP_FRONT_SEEN.rawValue)),
        ("front: records decoded", "front_drain", Int(SY_TP_FRONT_SEEN.rawValue), Int(SY_TP_FRONT_DRAINED.rawValue)),
        ("front: events to the connection", "front_deliver", Int(SY_TP_FRONT_DRAINED.rawValue), Int(SY_TP_FRONT_FINAL.rawValue)),
        ("front: response built + queued", "front_response", Int(SY_TP_FRONT_FINAL.rawValue), Int(SY_TP_FRONT_QUEUED.rawValue)),
        ("send -> client read returns", "front_to_client", Int(SY_TP_FRONT_QUEUED.rawValue), -2),
        ("round trip", "round_trip", -1, -2),
    ]

    /// `--breakdown`: a fresh echo server with SWITCHYARD_TRACE set, one connection sending `requests`
    /// completions in sequence (request ids 1...n), then a graceful stop (the processes write their traces)
    /// and the per-stage p50/p90 over the second half of the requests.
    func runBreakdown() throws {
        guard let bin = serverBin ?? ServerProcess.siblingBinary("switchyard") else {
            throw FrontBenchError("no switchyard binary next to this one; build it or pass --server-bin")
        }
        let dir = try ServerProcess.makeTempDirectory(prefix: "sy-breakdown")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let req = Self.probeRequest
        let p = try ServerProcess(binary: bin, serveArguments: ["--engine", "echo", "--workers", "1", "--log-level", "warn"]
                                      + serverArgs.split(separator: " ").map(String.init),
                                  socketPath: dir + "/server.sock", logPath: dir + "/server.log",
                                  environment: ["SWITCHYARD_TRACE": dir])
        try p.waitHealthy(timeout: 60)
        let n = max(1000, min(requests, 60_000))   // the trace table holds 65536 requests
        var client = [(UInt64, UInt64)]()
        client.reserveCapacity(n)
        let c = try BenchClient(path: p.socketPath)
        // --client-cpu N pins this client (each: the last CPU; any: unpinned).
        let saved = try CPUAffinity.get()
        if let pin = try clientPlacements().last ?? nil { try CPUAffinity.set([pin]) }
        defer { try? CPUAffinity.set(saved) }
        for _ in 0..<n {
            let t0 = monotonicNanos()
            try c.send(req)
            try c.readResponse()
            client.append((t0, monotonicNanos()))
        }
        c.close()
        let status = p.stop()
        guard status == 0 else { throw FrontBenchError("the traced server exited with status \(status):\n" + p.logTail()) }
        func load(_ path: String) throws -> [UInt64: [UInt64]] {
            guard let d = FileManager.default.contents(atPath: path) else { throw FrontBenchError("no trace at \(path):\n" + p.logTail()) }
            var rows: [UInt64: [UInt64]] = [:]
            for line in String(decoding: d, as: UTF8.self).split(separator: "\n") {
                let v = line.split(separator: " ").compactMap { UInt64($0) }
                if v.count == 1 + Int(SY_TRACE_POINTS) { rows[v[0]] = Array(v[1...]) }
            }
            return rows
        }
        let front = try load(dir + "/front.trace")
        let worker = try load(dir + "/worker-0.trace")
        // Join: the k-th request of the only client has id k. Each point comes from the process that owns it.
        var samples = [[Int64]](repeating: [], count: Self.breakdownStages.count)
        var joined = 0
        let points = Self.breakdownStages.flatMap { [$0.2, $0.3] }
        for k in (n / 2)..<n {
            let id = UInt64(k + 1)
            guard let f = front[id], let w = worker[id] else { continue }
            func at(_ point: Int) -> UInt64 {
                if point == -1 { return client[k].0 }
                if point == -2 { return client[k].1 }
                return (4...7).contains(point) ? w[point] : f[point]
            }
            if points.contains(where: { at($0) == 0 }) { continue }
            joined += 1
            for (i, st) in Self.breakdownStages.enumerated() {
                samples[i].append(Int64(bitPattern: at(st.3) &- at(st.2)))
            }
        }
        if let rowsPath = breakdownRows {
            var text = ""
            for k in 0..<samples[0].count { text += samples.map { String($0[k]) }.joined(separator: " ") + "\n" }
            guard FileManager.default.createFile(atPath: rowsPath, contents: Data(text.utf8)) else {
                throw FrontBenchError("cannot write \(rowsPath)")
            }
        }
        guard joined > n / 4 else { throw FrontBenchError("only \(joined) of \(n - n / 2) requests had every trace point") }
        print("latency breakdown: \(joined) traced round trips (the second half of \(n)), one connection, echo worker")
        var result: [String: Any] = ["bench": "front-breakdown", "requests": n, "traced": joined,
                                     "server_args": "--engine echo --workers 1 " + serverArgs]
        var softwareP50: Int64 = 0
        for (i, st) in Self.breakdownStages.enumerated() {
            let sorted = samples[i].sorted()
            let p50 = nearestRank(sorted, percent: 50), p90 = nearestRank(sorted, percent: 90)
            print("  " + st.0.padding(toLength: 46, withPad: " ", startingAt: 0)
                  + String(format: " p50 %6.2f us  p90 %6.2f us", Double(p50) / 1000, Double(p90) / 1000))
            result["\(st.1)_p50_ns"] = Int(p50)
            result["\(st.1)_p90_ns"] = Int(p90)
            if st.2 >= 0 && st.3 >= 0 { softwareP50 += p50 }
        }
        print(String(format: "  sum of the server's stages' p50: %.2f us (front and worker code and the two ring hand-offs)",
                     Double(softwareP50) / 1000))
        result["server_stages_p50_sum_ns"] = Int(softwareP50)
        try writeJSONDocument(result, to: json)
    }
}
