// Socket activation (issue 5: "A listening socket handed over by systemd (LISTEN_FDS) is used as is"): the
// real binary started the way systemd starts it — a listening Unix socket, bound by someone else, as fd 3,
// LISTEN_FDS=1 and LISTEN_PID set to the server's own pid (systemd sets it between fork and exec; here a
// `sh -c 'export LISTEN_PID=$$ …; exec switchyard serve …'` wrapper does, since exec keeps the pid).
import ClientKit
import Foundation
import Glibc
import Testing

/// A listening Unix socket bound by the test (the role systemd plays): path, descriptor, inode.
private struct ActivationSocket {
    let path: String
    let fd: Int32
    let inode: UInt64

    init(path: String) throws {
        // Not CLOEXEC here: the spawn's dup2 onto fd 3 is what the child inherits; this copy is closed by us.
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard s >= 0 else { throw HarnessError("socket: errno \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { close(s); throw HarnessError("path too long: \(path)") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0, listen(s, 64) == 0 else { let e = errno; close(s); throw HarnessError("bind/listen \(path): errno \(e)") }
        // fd 3 itself would make the spawn's dup2(3, 3) a no-op; keep the source above it.
        if s <= 3 {
            let high = fcntl(s, F_DUPFD, 10)
            close(s)
            guard high >= 0 else { throw HarnessError("F_DUPFD: errno \(errno)") }
            fd = high
        } else {
            fd = s
        }
        self.path = path
        guard let ino = Self.inode(path) else { close(fd); throw HarnessError("stat \(path) after bind failed") }
        inode = ino
    }

    static func inode(_ path: String) -> UInt64? {
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { return nil }
        return UInt64(st.st_ino)
    }
}

/// `switchyard serve` spawned with `activation` as fd 3 and the given LISTEN_* setup.
private final class ActivatedServer {
    let pid: pid_t
    let logPath: String
    private var reaped = false
    private var status: Int32 = 0

    enum ListenPID { case ownPid, pid(pid_t) }

    init(activation: ActivationSocket, listenPID: ListenPID, arguments: [String], dir: String) throws {
        let bin = try Paths.binary()
        logPath = dir + "/server.log"
        // sh -c 'export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@"' BIN serve ...: $$ is the shell's pid, which
        // exec hands to the server, as systemd's fork-then-exec does.
        let pidExpr: String
        switch listenPID {
        case .ownPid: pidExpr = "$$"
        case .pid(let p): pidExpr = String(p)
        }
        let argv = ["/bin/sh", "-c", "export LISTEN_PID=\(pidExpr) LISTEN_FDS=1 LISTEN_FDNAMES=switchyard; exec \"$0\" \"$@\"",
                    bin, "serve"] + arguments
        var environment = ProcessInfo.processInfo.environment
        for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { environment[k] = nil }
        let envp = environment.map { "\($0.key)=\($0.value)" }

        pid = try spawnProcess("/bin/sh", argv: argv, envp: envp, logPath: logPath, passFD: activation.fd)
    }

    deinit { stop() }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func exited() -> Bool {
        if reaped { return true }
        var st: Int32 = 0
        if waitpid(pid, &st, WNOHANG) == pid { reaped = true; status = st }
        return reaped
    }

    /// Exit code after a normal exit, nil otherwise.
    var exitCode: Int32? { reaped && status & 0x7f == 0 ? (status >> 8) & 0xff : nil }

    /// GET /health through `path` until 200 (or the process exits / time runs out).
    func waitHealthy(path: String, timeout: Double = 60) throws {
        let end = Date().addingTimeInterval(timeout)
        var last = "no answer"
        while Date() < end {
            if exited() { throw HarnessError("server exited before /health was 200; log:\n\(log)") }
            let c = HTTPConnection(endpoint: .unix(path: path), timeout: 2)
            do {
                let r = try c.request(method: "GET", path: "/health")
                if r.head.status == 200 { return }
                last = "HTTP \(r.head.status)"
            } catch { last = "\(error)" }
            usleep(20_000)
        }
        throw HarnessError("not healthy through \(path) after \(timeout) s (last: \(last)); log:\n\(log)")
    }

    /// SIGTERM, wait up to 15 s, then SIGKILL; reaps; kills leftover workers. Idempotent.
    func stop() {
        let workers = exited() ? [] : Proc.children(of: pid)
        if !exited() {
            kill(pid, SIGTERM)
            if !waitUntil(15, { exited() }) {
                kill(pid, SIGKILL)
                var st: Int32 = 0
                if waitpid(pid, &st, 0) == pid { reaped = true; status = st }
            }
        }
        for w in workers where !Proc.isGone(w) && Proc.cmdline(w).contains("worker") { kill(w, SIGKILL) }
    }
}

@Suite(.serialized) struct ListenFDsTests {
    let serveArgs = ["--engine", "echo", "--workers", "1", "--numa", "off", "--log-level", "info"]

    @Test func handedOverSocketIsServedAsIs() throws {
        let dir = try Paths.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let activation = try ActivationSocket(path: dir + "/activated.sock")
        defer { close(activation.fd) }
        // --socket names another path: with a valid handover it must not be bound.
        let ownPath = dir + "/own.sock"
        let server = try ActivatedServer(activation: activation, listenPID: .ownPid,
                                         arguments: ["--socket", ownPath] + serveArgs, dir: dir)
        do {
            try server.waitHealthy(path: activation.path)
            let c = HTTPConnection(endpoint: .unix(path: activation.path), timeout: 30)
            defer { c.close() }
            let r = try c.request(method: "POST", path: "/v1/completions",
                                  body: jsonBytes(["prompt": "socket activation", "max_tokens": 64]))
            #expect(r.head.status == 200, "\(r.text)")
            let text = ((jsonObject(r.body)?["choices"] as? [[String: Any]])?.first)?["text"] as? String
            #expect(text == "socket activation", "\(r.text)")
            #expect(r.head.header("x-switchyard-worker") == "0")
            // Keep-alive on the handed-over socket: a second request on the same connection.
            let again = try c.request(method: "GET", path: "/health")
            #expect(again.head.status == 200)

            // Used as is: the same socket file (not unlinked and re-bound), and --socket not created.
            #expect(ActivationSocket.inode(activation.path) == activation.inode, "socket file replaced")
            #expect(access(ownPath, F_OK) != 0, "the server bound --socket although it was handed a socket")
            #expect(server.log.contains("listening on unix:fd 3"), "log:\n\(server.log)")

            server.stop()
            #expect(server.exitCode == 0, "log:\n\(server.log)")
            // The server did not create the socket file, so it must not remove it at shutdown.
            #expect(ActivationSocket.inode(activation.path) == activation.inode, "socket file removed at shutdown")
        } catch {
            throw HarnessError("\(error)\n--- server log ---\n\(server.log)")
        }
    }

    @Test func wrongListenPIDIsIgnored() throws {
        let dir = try Paths.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let activation = try ActivationSocket(path: dir + "/activated.sock")
        defer { close(activation.fd) }
        let ownPath = dir + "/own.sock"
        // LISTEN_PID of another process (ours): the descriptors are not meant for the server.
        let server = try ActivatedServer(activation: activation, listenPID: .pid(getpid()),
                                         arguments: ["--socket", ownPath] + serveArgs, dir: dir)
        do {
            try server.waitHealthy(path: ownPath)
            let c = HTTPConnection(endpoint: .unix(path: ownPath), timeout: 30)
            defer { c.close() }
            let r = try c.request(method: "POST", path: "/v1/completions", body: jsonBytes(["prompt": "own", "max_tokens": 8]))
            #expect(r.head.status == 200, "\(r.text)")
            #expect(!server.log.contains("listening on unix:fd"), "log:\n\(server.log)")
            #expect(server.log.contains("listening on unix:\(ownPath)"), "log:\n\(server.log)")
            // The handed-over socket is left alone (same file, nobody serves it).
            #expect(ActivationSocket.inode(activation.path) == activation.inode)

            server.stop()
            #expect(server.exitCode == 0, "log:\n\(server.log)")
            #expect(access(ownPath, F_OK) != 0, "the server's own socket file was not removed at shutdown")
        } catch {
            throw HarnessError("\(error)\n--- server log ---\n\(server.log)")
        }
    }
}
