// Test harness: starts the real `switchyard serve` binary on a unique temporary Unix socket, waits for
// GET /health = 200, and always stops it (SIGTERM, then SIGKILL). Also: /proc helpers (children, fds,
// Cpus_allowed_list) and the binary/model lookup shared by every end-to-end suite.
import ClientKit
import Foundation
import Glibc
import Testing

/// Why a harness step failed; the message carries the server's log where it helps.
struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

enum Paths {
    /// The package root: the first directory above this file holding Package.swift.
    static let packageRoot: String = {
        var dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while dir.path != "/" {
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("Package.swift").path) { return dir.path }
            dir = dir.deletingLastPathComponent()
        }
        return FileManager.default.currentDirectoryPath
    }()

    /// The `switchyard` executable: $SWITCHYARD_BIN_DIR/switchyard, else .build/release or .build/debug
    /// under the package root, whichever is newer.
    static func binary() throws -> String {
        if let dir = ProcessInfo.processInfo.environment["SWITCHYARD_BIN_DIR"], !dir.isEmpty {
            let p = dir + "/switchyard"
            guard access(p, X_OK) == 0 else { throw HarnessError("SWITCHYARD_BIN_DIR=\(dir) has no executable switchyard") }
            return p
        }
        let candidates = ["release", "debug"].map { packageRoot + "/.build/\($0)/switchyard" }
            .filter { access($0, X_OK) == 0 }
            .sorted { mtime($0) > mtime($1) }
        guard let p = candidates.first else {
            throw HarnessError("no switchyard binary under \(packageRoot)/.build/{release,debug}: run `swift build -c release` (or set SWITCHYARD_BIN_DIR)")
        }
        return p
    }

    /// The real model: $SWITCHYARD_MODEL, else <root>/models/SmolLM2-135M-Instruct.Q4_1.gguf.
    static func model() throws -> String {
        let p = ProcessInfo.processInfo.environment["SWITCHYARD_MODEL"].flatMap { $0.isEmpty ? nil : $0 }
            ?? packageRoot + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: p) else {
            throw HarnessError("model file \(p) is missing: run tools/fetch-model (or set SWITCHYARD_MODEL)")
        }
        return p
    }

    static func mtime(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_mtim.tv_sec) : 0
    }

    nonisolated(unsafe) static var counter = 0   // guarded by counterLock
    static let counterLock = NSLock()

    /// A fresh directory under /tmp with a short name (Unix socket paths are limited to 107 bytes).
    static func tempDir() throws -> String {
        counterLock.lock(); counter += 1; let n = counter; counterLock.unlock()
        let path = "/tmp/sy-e2e-\(getpid())-\(n)-\(UInt32.random(in: 0...UInt32.max))"
        guard mkdir(path, 0o700) == 0 else { throw HarnessError("mkdir \(path): errno \(errno)") }
        return path
    }
}

/// /proc helpers.
enum Proc {
    /// Parent pid from /proc/PID/stat (nil when the process is gone).
    static func parent(of pid: pid_t) -> pid_t? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return nil }
        let fields = s[s.index(after: close)...].split(separator: " ")
        guard fields.count > 2 else { return nil }
        return pid_t(fields[1])
    }

    /// User + system CPU seconds the process has used (its stat fields 14 and 15, in clock ticks), or nil.
    static func cpuSeconds(of pid: pid_t) -> Double? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return nil }
        // After the ")": field 3 (state) is index 0, so utime (14) and stime (15) are indices 11 and 12.
        let fields = s[s.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let u = Double(fields[11]), let k = Double(fields[12]) else { return nil }
        return (u + k) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Process state letter (R, S, Z, …) or nil when gone.
    static func state(of pid: pid_t) -> Character? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return nil }
        return s[s.index(after: close)...].split(separator: " ").first?.first
    }

    /// Names in a directory via readdir (FileManager's listing of /proc can fail while processes come and
    /// go, which it does constantly when other suites run in parallel).
    static func list(_ path: String) -> [String] {
        guard let d = opendir(path) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { p in
                String(decoding: p.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { out.append(name) }
        }
        return out
    }

    /// Live (not zombie) direct children of `pid`.
    static func children(of pid: pid_t) -> [pid_t] {
        list("/proc").compactMap { pid_t($0) }.filter { parent(of: $0) == pid && state(of: $0) != "Z" }.sorted()
    }

    static func cmdline(_ pid: pid_t) -> [String] {
        guard let d = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return [] }
        return d.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Number of open descriptors of `pid`.
    static func fdCount(_ pid: pid_t) -> Int {
        access("/proc/\(pid)/fd", F_OK) == 0 ? list("/proc/\(pid)/fd").count : -1
    }

    /// A field of /proc/PID/status, e.g. "Cpus_allowed_list".
    static func status(_ pid: pid_t, _ field: String) -> String? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in s.split(separator: "\n") where line.hasPrefix(field + ":") {
            return line.dropFirst(field.count + 1).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    /// The CPUs task `pid` may run on (its Cpus_allowed_list; empty if it is gone).
    static func allowedCPUs(_ pid: pid_t) -> [Int] { status(pid, "Cpus_allowed_list").map(expandCPUList) ?? [] }

    /// Expands a kernel CPU list ("0-2,5") to [0, 1, 2, 5].
    static func expandCPUList(_ s: String) -> [Int] {
        var out: [Int] = []
        for part in s.split(separator: ",") {
            let r = part.split(separator: "-").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            if r.count == 2 { out += Array(r[0]...r[1]) } else if r.count == 1 { out.append(r[0]) }
        }
        return out
    }

    /// True when `pid` no longer exists (or is a zombie nobody reaped yet).
    static func isGone(_ pid: pid_t) -> Bool {
        kill(pid, 0) != 0 && errno == ESRCH || state(of: pid) == "Z"
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` seconds pass.
@discardableResult
func waitUntil(_ timeout: Double, _ cond: () -> Bool) -> Bool {
    let end = Date().addingTimeInterval(timeout)
    while Date() < end {
        if cond() { return true }
        usleep(10_000)
    }
    return cond()
}

/// One running `switchyard serve`.
final class Server {
    let pid: pid_t
    let dir: String
    let socketPath: String
    let logPath: String
    let arguments: [String]
    private(set) var exitStatus: Int32?   // raw wait status once reaped

    var endpoint: Endpoint { .unix(path: socketPath) }

    /// Starts `switchyard serve --socket <tmp>/s.sock <arguments>` and waits for /health = 200.
    static func start(_ arguments: [String], socketPath: String? = nil, env: [String: String] = [:],
                      readyTimeout: Double = 60) throws -> Server {
        let s = try launch(arguments, socketPath: socketPath, env: env)
        do {
            try s.waitHealthy(timeout: readyTimeout)
        } catch {
            s.stop()
            throw error
        }
        return s
    }

    /// Starts the process without waiting for readiness.
    static func launch(_ arguments: [String], socketPath: String? = nil, env: [String: String] = [:]) throws -> Server {
        let bin = try Paths.binary()
        let dir = try Paths.tempDir()
        let sock = socketPath ?? dir + "/s.sock"
        let log = dir + "/server.log"
        let argv = [bin, "serve", "--socket", sock] + arguments
        var environment = ProcessInfo.processInfo.environment
        for (k, v) in env { environment[k] = v }
        let envp = environment.map { "\($0.key)=\($0.value)" }

        let pid = try spawnProcess(bin, argv: argv, envp: envp, logPath: log)
        return Server(pid: pid, dir: dir, socketPath: sock, logPath: log, arguments: arguments)
    }

    private init(pid: pid_t, dir: String, socketPath: String, logPath: String, arguments: [String]) {
        self.pid = pid; self.dir = dir; self.socketPath = socketPath; self.logPath = logPath; self.arguments = arguments
    }

    /// Stops the server and removes its directory (log included) unless SWITCHYARD_E2E_KEEP is set; failure
    /// messages carry the log's tail.
    deinit {
        stop()
        if ProcessInfo.processInfo.environment["SWITCHYARD_E2E_KEEP"] == nil { cleanUp() }
    }

    /// The server's combined stdout/stderr so far (its workers log there too).
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// The last `n` characters of the log, for failure messages.
    func logTail(_ n: Int = 4000) -> String {
        let l = log
        return l.count <= n ? l : "…" + String(l.suffix(n))
    }

    /// Polls GET /health until 200, the process exits, or the timeout passes.
    func waitHealthy(timeout: Double) throws {
        let end = Date().addingTimeInterval(timeout)
        var last = "no answer"
        while Date() < end {
            if reap(block: false) {
                throw HarnessError("switchyard serve \(arguments.joined(separator: " ")) exited (\(describeStatus())) before /health was 200; log:\n\(logTail())")
            }
            let c = HTTPConnection(endpoint: endpoint, timeout: 2)
            do {
                let r = try c.request(method: "GET", path: "/health")
                if r.head.status == 200 { return }
                last = "HTTP \(r.head.status) \(r.text)"
            } catch {
                last = "\(error)"
            }
            usleep(20_000)
        }
        throw HarnessError("switchyard serve \(arguments.joined(separator: " ")) not healthy after \(timeout) s (last: \(last)); log:\n\(logTail())")
    }

    /// Reaps the process if it exited; returns true once it has.
    @discardableResult
    func reap(block: Bool) -> Bool {
        if exitStatus != nil { return true }
        var st: Int32 = 0
        let r = waitpid(pid, &st, block ? 0 : WNOHANG)
        if r == pid { exitStatus = st; return true }
        if r < 0 && errno == ECHILD { exitStatus = -1; return true }
        return false
    }

    /// Exit code if it exited normally, nil if killed by a signal or still running.
    var exitCode: Int32? {
        guard let st = exitStatus, st >= 0, st & 0x7f == 0 else { return nil }
        return (st >> 8) & 0xff
    }

    func describeStatus() -> String {
        guard let st = exitStatus else { return "running" }
        if st < 0 { return "already reaped" }
        if st & 0x7f == 0 { return "exit \((st >> 8) & 0xff)" }
        return "signal \(st & 0x7f)"
    }

    /// Sends a signal (no-op once reaped).
    func signal(_ sig: Int32) {
        if exitStatus == nil { kill(pid, sig) }
    }

    /// Waits up to `timeout` seconds for the exit; true if it exited.
    func waitExit(timeout: Double) -> Bool {
        waitUntil(timeout) { reap(block: false) }
    }

    /// SIGTERM, wait up to `grace` s, then SIGKILL; always reaps. Kills leftover workers too. Idempotent.
    func stop(grace: Double = 15) {
        let workers = exitStatus == nil ? Proc.children(of: pid) : []
        if exitStatus == nil {
            signal(SIGTERM)
            if !waitExit(timeout: grace) {
                kill(pid, SIGKILL)
                reap(block: true)
            }
        }
        for w in workers where !Proc.isGone(w) && Proc.cmdline(w).contains("worker") { kill(w, SIGKILL) }
        unlink(socketPath)
    }

    /// Removes the temporary directory (keep it on failure for the log).
    func cleanUp() {
        try? FileManager.default.removeItem(atPath: dir)
    }

    // MARK: Workers

    /// Live worker processes: worker id → pid (children of the server whose command line is
    /// `switchyard worker --id N …`).
    func workers() -> [Int: pid_t] {
        var out: [Int: pid_t] = [:]
        for c in Proc.children(of: pid) {
            let args = Proc.cmdline(c)
            guard args.count > 1, args[1] == "worker", let i = args.firstIndex(of: "--id"), i + 1 < args.count,
                  let id = Int(args[i + 1]) else { continue }
            out[id] = c
        }
        return out
    }

    /// Waits until `n` workers run; returns them.
    func waitWorkers(_ n: Int, timeout: Double = 30) throws -> [Int: pid_t] {
        var w: [Int: pid_t] = [:]
        guard waitUntil(timeout, { w = workers(); return w.count == n }) else {
            throw HarnessError("expected \(n) worker processes of server \(pid), found \(w); log:\n\(logTail())")
        }
        return w
    }
}

/// Runs `body` with a started server and always stops it; the temporary directory is removed on success.
func withServer<T>(_ arguments: [String], env: [String: String] = [:], readyTimeout: Double = 60,
                   _ body: (Server) throws -> T) throws -> T {
    let s = try Server.start(arguments, env: env, readyTimeout: readyTimeout)
    defer { s.stop() }
    do {
        let r = try body(s)
        s.stop()
        s.cleanUp()
        return r
    } catch {
        throw HarnessError("\(error)\n--- server log (\(s.logPath)) ---\n\(s.logTail())")
    }
}

/// Spawns `path` with stdin from /dev/null, stdout and stderr appended to `logPath`, the signal mask
/// cleared and SIGPIPE/SIGTERM/SIGINT/SIGCHLD at their defaults (the test runner's must not leak into a
/// server), and `passFD` (if any) as descriptor 3.
func spawnProcess(_ path: String, argv: [String], envp: [String], logPath: String, passFD: Int32? = nil) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o600)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    if let fd = passFD { posix_spawn_file_actions_adddup2(&actions, fd, 3) }   // clears FD_CLOEXEC on the copy
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attr, &empty)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for sig in [SIGPIPE, SIGTERM, SIGINT, SIGCHLD] { sigaddset(&defaults, sig) }
    posix_spawnattr_setsigdefault(&attr, &defaults)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var pid: pid_t = 0
    let cargv = argv.map { strdup($0) } + [nil]
    let cenv = envp.map { strdup($0) } + [nil]
    defer { cargv.forEach { free($0) }; cenv.forEach { free($0) } }
    let rc = posix_spawn(&pid, path, &actions, &attr, cargv, cenv)
    guard rc == 0 else { throw HarnessError("posix_spawn \(path): errno \(rc)") }
    return pid
}

/// Whether this kernel has IORING_OP_FUTEX_WAIT (Linux 6.7), from uname's release.
func kernelHasFutexWait() -> Bool {
    var u = utsname()
    guard uname(&u) == 0 else { return false }
    let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
    guard parts.count == 2 else { return false }
    return parts[0] > 6 || (parts[0] == 6 && parts[1] >= 7)
}

/// The server's front and worker processes together use under 50 ms of CPU in 1 s without requests (after
/// 0.2 s for every spin and linger to end): they sleep in the kernel when idle.
func expectIdleUsesNoCPU(_ s: Server, workers: Int = 2, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let pids = [s.pid] + Array(try s.waitWorkers(workers).values)
    usleep(200_000)
    let before = pids.map { Proc.cpuSeconds(of: $0) ?? 0 }
    usleep(1_000_000)
    let used = zip(pids, before).map { (Proc.cpuSeconds(of: $0.0) ?? 0) - $0.1 }.reduce(0, +)
    #expect(used < 0.05, "front + workers used \(used) CPU seconds in 1 s without requests", sourceLocation: sourceLocation)
}
