// A tiny OpenAI-compatible server for tests: thread per connection on a Unix socket, keep-alive, SSE
// streaming in chunked encoding, and a few special paths for error handling.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

final class FakeServer: @unchecked Sendable {  // counters guarded by `lock`
    let path: String
    private var listenFD: Int32 = -1
    private let lock = NSLock()
    private var _connections = 0
    private var _requests = 0
    var connections: Int { lock.lock(); defer { lock.unlock() }; return _connections }
    var requests: Int { lock.lock(); defer { lock.unlock() }; return _requests }
    /// Delay between streamed tokens.
    let tokenDelayUs: UInt32

    init(tokenDelayUs: UInt32 = 500) throws {
        self.tokenDelayUs = tokenDelayUs
        path = "/tmp/sy-fake-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in path.utf8.enumerated() { p[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0, listen(fd, 64) == 0 else { close(fd); throw POSIXError(.EADDRINUSE) }
        listenFD = fd
        let t = Thread { [self] in self.acceptLoop(fd) }
        t.start()
    }

    func shutdownServer() {
        let fd = listenFD
        listenFD = -1
        if fd >= 0 { Glibc.shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
        unlink(path)
    }

    deinit { shutdownServer() }

    private func acceptLoop(_ lfd: Int32) {
        while true {
            let c = accept(lfd, nil, nil)
            if c < 0 { return }
            lock.lock(); _connections += 1; lock.unlock()
            let t = Thread { [self] in self.serve(c); close(c) }
            t.start()
        }
    }

    private func send(_ fd: Int32, _ s: String) -> Bool {
        let b = Array(s.utf8)
        var off = 0
        while off < b.count {
            let n = b.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    private func serve(_ fd: Int32) {
        var buf: [UInt8] = []
        var tmp = [UInt8](repeating: 0, count: 65536)
        while true {
            // Read a head.
            var headEnd: Int?
            while headEnd == nil {
                if let r = findHeadEnd(buf) { headEnd = r; break }
                let n = tmp.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, 65536, 0) }
                if n <= 0 { return }
                buf.append(contentsOf: tmp[0..<n])
            }
            guard let he = headEnd else { return }
            let head = String(decoding: buf[0..<he], as: UTF8.self)
            buf.removeFirst(he + 4)
            let lines = head.components(separatedBy: "\r\n")
            let parts = lines[0].split(separator: " ")
            guard parts.count >= 2 else { return }
            let path = String(parts[1])
            var length = 0
            var session = ""
            for l in lines.dropFirst() {
                let kv = l.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard kv.count == 2 else { continue }
                if kv[0].lowercased() == "content-length" { length = Int(kv[1]) ?? 0 }
                if kv[0].lowercased() == "x-session-id" { session = kv[1] }
            }
            while buf.count < length {
                let n = tmp.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, 65536, 0) }
                if n <= 0 { return }
                buf.append(contentsOf: tmp[0..<n])
            }
            let body = Array(buf[0..<length])
            buf.removeFirst(length)
            lock.lock(); _requests += 1; lock.unlock()
            if !respond(fd, path: path, session: session, body: body) { return }
        }
    }

    private func findHeadEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 { return i }
        return nil
    }

    /// Returns false to close the connection.
    private func respond(_ fd: Int32, path: String, session: String, body: [UInt8]) -> Bool {
        switch path {
        case "/loading":
            // Switchyard's answer while its workers load.
            let b = #"{"error":{"message":"not ready: no worker is ready","type":"server_error","param":null,"code":"not_ready"}}"#
            return send(fd, "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: application/json\r\nContent-Length: \(b.utf8.count)\r\n\r\n\(b)")
        case "/streamerror":
            // A stream that starts, then ends with Switchyard's SSE error event (worker died mid-stream).
            let delta = #"data: {"choices":[{"index":0,"delta":{"content":"part"}}]}"# + "\n\n"
            let err = #"data: {"error":{"message":"worker 0 exited","type":"server_error","param":null,"code":"worker_error"}}"# + "\n\n"
            return send(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + delta + err + "data: [DONE]\n\n") && false
        case "/busy":
            return send(fd, "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 4\r\n\r\nbusy")
        case "/plain":
            return send(fd, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        case "/chunked":
            _ = send(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            _ = send(fd, "3;ext=1\r\nabc\r\n")
            return send(fd, "4\r\ndefg\r\n0\r\nX-Trailer: 1\r\n\r\n")
        case "/close":
            _ = send(fd, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close")
            return false
        case "/garbage":
            _ = send(fd, "NOT HTTP\r\n\r\n")
            return false
        default: break
        }
        let obj = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:]
        let maxTokens = (obj["max_tokens"] as? Int) ?? 8
        let stream = (obj["stream"] as? Bool) ?? false
        let messages = (obj["messages"] as? [[String: Any]]) ?? []
        let promptWords = messages.reduce(0) { $0 + (($1["content"] as? String)?.split(separator: " ").count ?? 0) }
        // Cached: everything but the last message (the server "kept" the history of this session).
        let lastWords = (messages.last?["content"] as? String)?.split(separator: " ").count ?? 0
        let cached = session.isEmpty ? 0 : promptWords - lastWords
        var h: UInt64 = 1469598103934665603
        for b in session.utf8 { h = (h ^ UInt64(b)) &* 1099511628211 }
        let worker = "w\(h % 2)"
        let usage = #""usage":{"prompt_tokens":\#(promptWords),"completion_tokens":\#(maxTokens),"prompt_tokens_details":{"cached_tokens":\#(cached)}}"#
        if !stream {
            let text = (0..<maxTokens).map { "t\($0)" }.joined(separator: " ")
            let b = #"{"choices":[{"index":0,"message":{"role":"assistant","content":"\#(text)"},"finish_reason":"length"}],\#(usage)}"#
            return send(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Switchyard-Worker: \(worker)\r\nContent-Length: \(b.utf8.count)\r\n\r\n\(b)")
        }
        guard send(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nX-Switchyard-Worker: \(worker)\r\n\r\n") else { return false }
        func chunk(_ s: String) -> Bool { send(fd, String(Array(s.utf8).count, radix: 16) + "\r\n" + s + "\r\n") }
        for i in 0..<maxTokens {
            let ev = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\(i == 0 ? "" : " ")t\(i)\"},\"finish_reason\":null}]}\n\n"
            guard chunk(ev) else { return false }
            usleep(tokenDelayUs)
        }
        guard chunk("data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n"),
              chunk("data: {\"choices\":[],\(usage)}\n\n"), chunk("data: [DONE]\n\n") else { return false }
        return send(fd, "0\r\n\r\n")
    }
}
