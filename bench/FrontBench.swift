// switchyard-bench front: the front's added latency and throughput, with the in-process echo backend.
//   1. Round trip of a small non-streaming POST /v1/completions through the front, against a raw Unix-socket
//      echo (same request bytes, blocking echo thread) in the same run: p50/p99 of each and the difference.
//   2. Requests/s with 64 concurrent keep-alive connections (one client thread per connection).
// The echo backend hands each request to its own thread and back (two eventfd wake-ups), as a worker would.
import ArgumentParser
import Foundation
import Front
import Glibc

struct FrontBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "front", abstract: "Front round trip and requests/s (echo backend).")

    @Option(help: "Round trips per latency measurement.") var requests = 20000
    @Option(help: "Concurrent keep-alive connections for the throughput run.") var connections = 64
    @Option(help: "Seconds for the throughput run.") var seconds = 3.0
    @Option(help: "Write JSON results to PATH ('-' for stdout).") var json: String?

    func run() throws {
        let dir = String(cString: mkdtemp(strdup("/tmp/sy-front-bench-XXXXXX")))
        defer { rmdir(dir) }
        let body = #"{"prompt":"hi","max_tokens":1}"#
        let req = Array("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)".utf8)

        // Raw echo baseline.
        let rawPath = dir + "/raw.sock"
        let rawFD = try listenUnix(rawPath)
        let echoThread = Thread {
            let c = accept(rawFD, nil, nil)
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(c, &buf, buf.count)
                if n <= 0 { break }
                _ = write(c, buf, n)
            }
            close(c)
        }
        echoThread.start()
        let raw = try BenchClient(path: rawPath)
        let rawLat = try measure(requests) { try raw.send(req); try raw.readExactly(req.count) }
        raw.close()
        close(rawFD)
        unlink(rawPath)

        // Through the front.
        var cfg = FrontConfig()
        cfg.socketPath = dir + "/front.sock"
        cfg.handleSignals = false
        cfg.useSystemdSockets = false
        cfg.log = { _, _ in }
        let backend = EchoBackend()
        let server = try FrontServer(config: cfg, backend: backend)
        let done = DispatchSemaphore(value: 0)
        Thread { try? server.run(); done.signal() }.start()
        let fc = try BenchClient(path: cfg.socketPath ?? "")
        let frontLat = try measure(requests) { try fc.send(req); try fc.readResponse() }
        // GET /health never reaches the backend's thread: the front's own cost without the handoff.
        let health = Array("GET /health HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
        let healthLat = try measure(requests) { try fc.send(health); try fc.readResponse() }
        fc.close()

        // Throughput.
        let path = cfg.socketPath ?? ""
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: connections)
        counts.initialize(repeating: 0, count: connections)
        let group = DispatchGroup()
        let deadline = Date().addingTimeInterval(seconds)
        for i in 0..<connections {
            group.enter()
            // Each thread writes only its own slot; the main thread reads them after group.wait().
            nonisolated(unsafe) let slot = counts + i
            Thread {
                defer { group.leave() }
                guard let c = try? BenchClient(path: path) else { return }
                while Date() < deadline {
                    do { try c.send(req); try c.readResponse() } catch { break }
                    slot.pointee += 1
                }
                c.close()
            }.start()
        }
        let t0 = Date()
        group.wait()
        let elapsed = Date().timeIntervalSince(t0)
        let total = (0..<connections).reduce(0) { $0 + counts[$1] }
        counts.deallocate()
        server.requestShutdown()
        done.wait()
        backend.stop()

        let result: [String: Any] = [
            "bench": "front",
            "requests": requests,
            "raw_echo_p50_us": rawLat.p50, "raw_echo_p99_us": rawLat.p99,
            "front_p50_us": frontLat.p50, "front_p99_us": frontLat.p99,
            "added_p50_us": frontLat.p50 - rawLat.p50, "added_p99_us": frontLat.p99 - rawLat.p99,
            "front_health_p50_us": healthLat.p50, "front_health_p99_us": healthLat.p99,
            "connections": connections, "requests_per_second": Double(total) / elapsed,
        ]
        print(String(format: "raw echo   p50 %.1f us  p99 %.1f us", rawLat.p50, rawLat.p99))
        print(String(format: "front      p50 %.1f us  p99 %.1f us  (added p50 %.1f us, p99 %.1f us)",
                     frontLat.p50, frontLat.p99, frontLat.p50 - rawLat.p50, frontLat.p99 - rawLat.p99))
        print(String(format: "GET /health p50 %.1f us  p99 %.1f us  (front alone, no backend handoff)", healthLat.p50, healthLat.p99))
        print(String(format: "%d keep-alive connections: %.0f requests/s", connections, Double(total) / elapsed))
        if let json {
            let data = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys, .prettyPrinted])
            if json == "-" { print(String(decoding: data, as: UTF8.self)) } else { try data.write(to: URL(fileURLWithPath: json)) }
        }
    }

    private func measure(_ n: Int, _ body: () throws -> Void) throws -> (p50: Double, p99: Double) {
        for _ in 0..<min(1000, n) { try body() }   // warm-up
        var lat = [Double]()
        lat.reserveCapacity(n)
        for _ in 0..<n {
            let t = DispatchTime.now().uptimeNanoseconds
            try body()
            lat.append(Double(DispatchTime.now().uptimeNanoseconds - t) / 1000)
        }
        lat.sort()
        return (lat[n / 2], lat[min(n - 1, n * 99 / 100)])
    }

    private func listenUnix(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 || listen(fd, 16) != 0 { throw BenchError("bind/listen \(path): \(errno)") }
        return fd
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Blocking Unix-socket client that reads Content-Length responses.
final class BenchClient {
    let fd: Int32
    private var buf = [UInt8](repeating: 0, count: 65536)
    private var have = 0

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
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
        if rc != 0 { Glibc.close(fd); throw BenchError("connect \(path): \(errno)") }
    }

    func close() { Glibc.close(fd) }

    func send(_ b: [UInt8]) throws {
        var off = 0
        while off < b.count {
            let n = b[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { throw BenchError("send failed") }
            off += n
        }
    }

    private func fill() throws {
        if have == buf.count { throw BenchError("response too large") }
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + have, $0.count - have, 0) }
        if n <= 0 { throw BenchError("connection closed") }
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

    /// One response with Content-Length.
    func readResponse() throws {
        while true {
            if let end = headerEnd() {
                guard let len = contentLength(end) else { throw BenchError("no content-length") }
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
