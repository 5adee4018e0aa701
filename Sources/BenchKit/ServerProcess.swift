// Starting and stopping a real `switchyard serve` for a bench run (or a test): spawn it on a temporary socket,
// wait until GET /health answers 200, stop it with SIGTERM (SIGKILL after a grace period), always.
import ClientKit
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The pid of the server being benchmarked, for the SIGINT/SIGTERM handler of the bench process (so Ctrl-C
/// never leaves a server behind). Written by the main thread before/after each run; the handler only reads
/// it (an aligned Int32 load is async-signal-safe).
nonisolated(unsafe) private var runningServerPID: Int32 = 0

private func forwardSignalAndExit(_ sig: Int32) {
    let pid = runningServerPID
    if pid > 0 { kill(pid, SIGTERM) }
    _exit(128 + sig)
}

/// A `switchyard serve` child process.
public final class ServerProcess {
    public let binary: String
    public let arguments: [String]
    public let socketPath: String
    /// The server's stdout and stderr go here (shown in errors).
    public let logPath: String
    private let process = Process()
    private var stopped = false

    /// Directory holding the running executable (`/proc/self/exe`), where `swift build` also puts the
    /// `switchyard` binary.
    public static func executableDirectory() -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        let path = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return (path as NSString).deletingLastPathComponent
    }

    /// `name` next to the running executable, if it is there and executable.
    public static func siblingBinary(_ name: String) -> String? {
        guard let dir = executableDirectory() else { return nil }
        let p = dir + "/" + name
        return access(p, X_OK) == 0 ? p : nil
    }

    /// Makes a fresh private directory under /tmp for sockets and logs.
    public static func makeTempDirectory(prefix: String) throws(BenchError) -> String {
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw .server("mkdtemp failed: errno \(errno)") }
        return String(cString: p)
    }

    /// Spawns `binary serve --socket socketPath <extra>`; the server's output goes to `logPath`. `environment`
    /// is added to this process's environment for the server (and the workers it starts).
    public init(binary: String, serveArguments extra: [String], socketPath: String, logPath: String,
                environment: [String: String] = [:]) throws(BenchError)
    {
        self.binary = binary
        self.arguments = ["serve", "--socket", socketPath] + extra
        self.socketPath = socketPath
        self.logPath = logPath
        guard FileManager.default.createFile(atPath: logPath, contents: nil),
              let log = FileHandle(forWritingAtPath: logPath) else { throw .server("cannot create \(logPath)") }
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        }
        do { try process.run() } catch { throw .server("cannot start \(binary): \(error)") }
        try? log.close()
        runningServerPID = process.processIdentifier
        signal(SIGINT, forwardSignalAndExit)
        signal(SIGTERM, forwardSignalAndExit)
    }

    deinit { stop() }

    public var pid: Int32 { process.processIdentifier }

    /// The last `lines` lines of the server's log.
    public func logTail(lines: Int = 20) -> String {
        guard let d = FileManager.default.contents(atPath: logPath) else { return "" }
        return String(decoding: d, as: UTF8.self).split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    /// Polls GET /health every 100 ms until it answers 200. Throws when the server exits or `timeout` passes
    /// (the error carries the log's tail).
    public func waitHealthy(timeout: Double = 300) throws(BenchError) {
        let deadline = monotonicNanos() + UInt64(timeout * 1e9)
        var last = "no answer yet"
        while monotonicNanos() < deadline {
            guard process.isRunning else {
                throw .server("server exited (status \(process.terminationStatus)) before it was healthy:\n" + logTail())
            }
            let conn = HTTPConnection(endpoint: .unix(path: socketPath), timeout: 5)
            do {
                let r = try conn.request(method: "GET", path: "/health")
                if r.head.status == 200 { return }
                last = "HTTP \(r.head.status) \(r.text.prefix(200))"
            } catch {
                last = error.description
            }
            conn.close()
            usleep(100_000)
        }
        throw .server("server not healthy after \(timeout) s (last: \(last)):\n" + logTail())
    }

    /// SIGTERM, then SIGKILL when it has not exited within `grace` seconds. Idempotent. Returns the exit status.
    @discardableResult
    public func stop(grace: Double = 15) -> Int32 {
        if stopped { return process.isRunning ? -1 : process.terminationStatus }
        stopped = true
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            let deadline = monotonicNanos() + UInt64(grace * 1e9)
            while process.isRunning && monotonicNanos() < deadline { usleep(20_000) }
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }
        if runningServerPID == process.processIdentifier { runningServerPID = 0 }
        return process.terminationStatus
    }
}
