// Test helpers: an in-process server on a temporary Unix socket with the echo backend, and a tiny raw-socket
// HTTP/1.1 client that reads Content-Length, chunked and close-delimited responses.
import Foundation
import Glibc
import Synchronization
@testable import Front

struct TestError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

final class TestServer: @unchecked Sendable {
    // @unchecked Sendable: `server` is used by its run thread; the test thread only calls requestShutdown
    // (thread-safe) and reads immutable fields.
    let path: String
    let dir: String
    let server: FrontServer
    let backend: EchoBackend
    private let done = DispatchSemaphore(value: 0)
    private(set) var runError: (any Error)? = nil
    private var stopped = false
    /// Everything the server logged.
    let logSink = LogSink()
    var logs: [String] { logSink.lines.withLock { $0 } }
    /// The thread running the event loop (for thread-directed signals in tests).
    private(set) var loopThread: pthread_t? = nil
    private var finished = false   // run() has returned and its semaphore signal was consumed

    static func tempDir() -> String {
        var template = Array("/tmp/sy-front-XXXXXX".utf8CString)
        let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        return p.map { String(cString: $0) } ?? "/tmp"
    }

    init(configure: (inout FrontConfig) -> Void = { _ in }, echo: EchoBackend.Options = EchoBackend.Options(),
         dir: String? = nil) throws {
        self.dir = dir ?? TestServer.tempDir()
        path = self.dir + "/front.sock"
        var cfg = FrontConfig()
        cfg.socketPath = path
        cfg.handleSignals = false
        cfg.useSystemdSockets = false
        cfg.shutdownGrace = 2
        let sink = logSink
        cfg.log = { _, line in sink.lines.withLock { $0.append(line) } }
        // tools/test runs this suite a second time with SWITCHYARD_TEST_FRONT_RECV=multishot, so every test
        // covers both ways of reading Unix-socket clients (a test's own `configure` still decides last).
        if let m = getenv("SWITCHYARD_TEST_FRONT_RECV") { cfg.deferConsume = String(cString: m) != "multishot" }
        configure(&cfg)
        backend = EchoBackend(options: echo)
        do { server = try FrontServer(config: cfg, backend: backend) } catch { backend.stop(); throw error }
        let t = Thread { [self] in
            loopThread = pthread_self()
            do { try server.run() } catch { runError = error }
            done.signal()
        }
        t.start()
    }

    /// Requests shutdown and waits for run() to return. Returns false on timeout.
    @discardableResult
    func stop(timeout: Double = 10) -> Bool {
        if stopped { return true }
        stopped = true
        server.requestShutdown()
        let ok = finished || done.wait(timeout: .now() + timeout) == .success
        if ok { backend.stop() }
        rmdir(dir)
        return ok
    }

    /// Waits for run() to return on its own (after a shutdown was requested elsewhere).
    func waitStopped(timeout: Double) -> Bool {
        if finished { return true }
        finished = done.wait(timeout: .now() + timeout) == .success
        return finished
    }

    deinit { stop() }
}

extension EchoBackend {
    /// The ids of the requests cancelled so far, once there are at least `count`, or after `timeout` seconds
    /// (cancellations reach the backend asynchronously, after the loop sees the client leave).
    func awaitCancellations(_ count: Int = 1, timeout: Double = 3) -> [UInt64] {
        var cancelled = cancelledRequests
        for _ in 0..<Int(timeout * 100) where cancelled.count < count {
            usleep(10_000)
            cancelled = cancelledRequests
        }
        return cancelled
    }
}

final class LogSink: Sendable {
    let lines = Mutex<[String]>([])
}

struct RawResponse {
    var status: Int
    var headers: [(String, String)]
    var body: [UInt8]
    var bodyText: String { String(decoding: body, as: UTF8.self) }
    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
    func json() throws -> JSONValue { try JSON.parse(body) }
}

final class RawClient {
    let fd: Int32
    private var buf: [UInt8] = []
    private(set) var closedByPeer = false

    init(path: String, timeout: Double = 5) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw TestError("socket: \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 { let e = errno; close(fd); throw TestError("connect(\(path)): \(String(cString: strerror(e)))") }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// TCP client to 127.0.0.1:port.
    init(tcpPort: UInt16, timeout: Double = 5) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw TestError("socket: \(errno)") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = tcpPort.bigEndian
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 { let e = errno; close(fd); throw TestError("connect tcp: \(String(cString: strerror(e)))") }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ s: String) throws { try send(Array(s.utf8)) }

    func send(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { throw TestError("send: \(String(cString: strerror(errno)))") }
            off += n
        }
    }

    /// Reads more bytes into the buffer; false on EOF. Throws on timeout.
    private func fill() throws -> Bool {
        var tmp = [UInt8](repeating: 0, count: 65536)
        let n = tmp.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n < 0 {
            if errno == EAGAIN || errno == EWOULDBLOCK { throw TestError("timed out waiting for the server") }
            if errno == ECONNRESET { closedByPeer = true; return false }
            throw TestError("recv: \(String(cString: strerror(errno)))")
        }
        if n == 0 { closedByPeer = true; return false }
        buf.append(contentsOf: tmp[0..<n])
        return true
    }

    private func line() throws -> String {
        while true {
            if let i = findCRLF() {
                let l = String(decoding: buf[0..<i], as: UTF8.self)
                buf.removeFirst(i + 2)
                return l
            }
            if try !fill() { throw TestError("connection closed mid-response") }
        }
    }

    private func findCRLF() -> Int? {
        if buf.count < 2 { return nil }
        for i in 0..<(buf.count - 1) where buf[i] == 13 && buf[i + 1] == 10 { return i }
        return nil
    }

    private func take(_ n: Int) throws -> [UInt8] {
        while buf.count < n { if try !fill() { throw TestError("connection closed mid-body") } }
        let out = Array(buf[0..<n])
        buf.removeFirst(n)
        return out
    }

    /// Reads one response (skipping 1xx unless `stopAt100`); the answer to a HEAD request (`head`) has no body.
    func read(stopAt100: Bool = false, head: Bool = false) throws -> RawResponse {
        while true {
            let statusLine = try line()
            let parts = statusLine.split(separator: " ", maxSplits: 2)
            guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
                throw TestError("bad status line: \(statusLine)")
            }
            var headers: [(String, String)] = []
            while true {
                let l = try line()
                if l.isEmpty { break }
                guard let c = l.firstIndex(of: ":") else { throw TestError("bad header: \(l)") }
                headers.append((String(l[..<c]), String(l[l.index(after: c)...]).trimmingCharacters(in: .whitespaces)))
            }
            var r = RawResponse(status: status, headers: headers, body: [])
            if status == 100 { if stopAt100 { return r }; continue }
            if head { return r }
            if let cl = r.header("content-length"), let n = Int(cl) {
                r.body = try take(n)
            } else if r.header("transfer-encoding")?.lowercased() == "chunked" {
                while true {
                    let sizeLine = try line()
                    guard let size = Int(sizeLine.split(separator: ";")[0], radix: 16) else { throw TestError("bad chunk size \(sizeLine)") }
                    if size == 0 { _ = try line(); break }
                    r.body += try take(size)
                    _ = try take(2)
                }
            } else {
                while try fill() {}
                r.body = buf
                buf = []
            }
            return r
        }
    }

    /// Bytes received but not yet read as part of a response.
    var pending: Int { buf.count }

    /// True when the server closes the connection (EOF) within the receive timeout.
    func waitClosed() -> Bool {
        do { while try fill() {} } catch { return false }
        return true
    }
}

func request(_ method: String, _ path: String, body: String? = nil, headers: [String] = []) -> String {
    var s = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\n"
    for h in headers { s += h + "\r\n" }
    if let body { s += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n" }
    s += "\r\n"
    if let body { s += body }
    return s
}

/// The SSE `data:` payloads of a streamed body.
func sseEvents(_ body: String) -> [String] {
    body.components(separatedBy: "\n\n").compactMap { ev in
        ev.hasPrefix("data: ") ? String(ev.dropFirst(6)) : nil
    }
}

func openFDCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

/// CPU seconds used so far by one thread (its CPU-time clock), so other tests running in parallel don't count.
func threadCPUSeconds(_ t: pthread_t) -> Double {
    var clock = clockid_t()
    guard pthread_getcpuclockid(t, &clock) == 0 else { return -1 }
    var ts = timespec()
    clock_gettime(clock, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// User + system CPU seconds of this process so far.
func processCPUSeconds() -> Double {
    var ru = rusage()
    getrusage(RUSAGE_SELF.rawValue, &ru)
    return Double(ru.ru_utime.tv_sec) + Double(ru.ru_utime.tv_usec) / 1e6
        + Double(ru.ru_stime.tv_sec) + Double(ru.ru_stime.tv_usec) / 1e6
}
