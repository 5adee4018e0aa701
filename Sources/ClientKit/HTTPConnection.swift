// A small blocking HTTP/1.1 client over POSIX sockets (Unix-domain or TCP). One connection, kept alive
// between requests and re-opened when the server closed it. Not thread-safe: use one per thread.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Monotonic clock in nanoseconds (CLOCK_MONOTONIC): timestamps of streamed events.
@inline(__always)
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Status line and headers of a response. Header names are lower-cased.
public struct HTTPHead: Sendable, Hashable {
    public var status: Int
    public var reason: String
    public var headers: [HeaderField]

    public struct HeaderField: Sendable, Hashable {
        public var name: String
        public var value: String
    }

    /// First value of a header (name case-insensitive).
    public func header(_ name: String) -> String? {
        let n = name.lowercased()
        return headers.first { $0.name == n }?.value
    }

    /// The typed error for a non-2xx status (nil for 2xx). A 503 is `.serverLoading` when the server says it
    /// is still starting — Switchyard's error code "not_ready" (`{"error":{...,"code":"not_ready"}}`), its
    /// GET /health body `{"status":"loading",...}`, an X-Switchyard-State: loading header, or llama-server's
    /// "Loading model" message — and `.overloaded` otherwise; both carry Retry-After when present.
    public func error(body: String) -> ClientError? {
        guard !(200..<300).contains(status) else { return nil }
        if status == 503 {
            let retry = header("retry-after").flatMap { Int($0.trimmingSpaces) }
            let state = header("x-switchyard-state")?.lowercased() ?? ""
            if state.contains("loading") || Self.saysLoading(body) { return .serverLoading(retryAfter: retry) }
            return .overloaded(retryAfter: retry)
        }
        return .httpStatus(code: status, body: body)
    }

    /// Whether a 503 body says "still loading". Matched on the body's first 4 KiB with ASCII whitespace removed
    /// and letters lower-cased, so `"code": "not_ready"` and `"code":"not_ready"` both match, while an
    /// "overloaded" message does not.
    static func saysLoading(_ body: String) -> Bool {
        var compact: [UInt8] = []
        compact.reserveCapacity(min(body.utf8.count, 4096))
        for b in body.utf8.prefix(4096) where b != 32 && b != 9 && b != 10 && b != 13 {
            compact.append(b >= 65 && b <= 90 ? b + 32 : b)
        }
        let text = String(decoding: compact, as: UTF8.self)
        return text.contains(#""code":"not_ready""#) || text.contains(#""status":"loading""#)
            || text.contains("loadingmodel")
    }
}

/// A complete response.
public struct HTTPResponse: Sendable {
    public var head: HTTPHead
    public var body: [UInt8]
    public var text: String { String(decoding: body, as: UTF8.self) }
}

/// One HTTP/1.1 connection.
public final class HTTPConnection {
    public let endpoint: Endpoint
    /// Seconds without progress before a read, write or connect fails with `.timeout`.
    public let timeout: Double
    /// Largest response head / whole buffered body accepted.
    public static let maxHeadBytes = 64 * 1024
    public static let maxBodyBytes = 256 * 1024 * 1024

    private var fd: Int32 = -1
    /// Received bytes not yet consumed: buf[rpos..<buf.count].
    private var buf: [UInt8] = []
    private var rpos = 0

    /// Creates the connection (connects lazily on first request, so a missing server surfaces there too;
    /// call `connect()` to check up front).
    public init(endpoint: Endpoint, timeout: Double = 60) {
        self.endpoint = endpoint
        self.timeout = timeout
    }

    deinit { close() }

    public var isOpen: Bool { fd >= 0 }

    /// Closes the socket (idempotent).
    public func close() {
        if fd >= 0 { _ = Glibc.close(fd) }
        fd = -1
        buf.removeAll(keepingCapacity: true)
        rpos = 0
    }

    /// Opens the socket if it is not open.
    public func connect() throws(ClientError) {
        guard fd < 0 else { return }
        switch endpoint {
        case .unix(let path): fd = try Self.connectUnix(path, timeout: timeout)
        case .tcp(let host, let port): fd = try Self.connectTCP(host, port, timeout: timeout)
        }
    }

    // MARK: - Requests

    /// Sends a request and reads the whole response (any status; see `HTTPHead.error(body:)`).
    public func request(
        method: String, path: String, headers: [(String, String)] = [], body: [UInt8] = []
    ) throws(ClientError) -> HTTPResponse {
        var out: [UInt8] = []
        let head = try stream(method: method, path: path, headers: headers, body: body) { chunk in
            out.append(contentsOf: chunk)
            return out.count <= HTTPConnection.maxBodyBytes
        }
        if out.count > HTTPConnection.maxBodyBytes { throw .responseTooLarge(limit: HTTPConnection.maxBodyBytes) }
        return HTTPResponse(head: head, body: out)
    }

    /// Sends a request, then passes the decoded body (Content-Length, chunked, or until close) to `onBody`
    /// piece by piece as it arrives. `onBody` returns false to stop early (the connection is then closed).
    /// `onHead` sees the head before any body. Returns the head. A kept-alive connection the server has closed meanwhile is re-opened once.
    @discardableResult
    public func stream(
        method: String, path: String, headers: [(String, String)] = [], body: [UInt8] = [],
        onBody: (ArraySlice<UInt8>) -> Bool,
        onHead: (HTTPHead) -> Void = { _ in }
    ) throws(ClientError) -> HTTPHead {
        let wasOpen = fd >= 0
        var head: HTTPHead
        do {
            try connect()
            try sendRequest(method: method, path: path, headers: headers, body: body)
            head = try readHead()
        } catch {
            // The server may have closed an idle kept-alive connection: retry once on a fresh one.
            guard wasOpen, case .connectionClosed = error else { close(); throw error }
            close()
            try connect()
            try sendRequest(method: method, path: path, headers: headers, body: body)
            head = try readHead()
        }
        onHead(head)
        do {
            let keep = try readBody(head: head, method: method, onBody: onBody)
            if !keep { close() }
        } catch {
            close()
            throw error
        }
        return head
    }

    private func sendRequest(method: String, path: String, headers: [(String, String)], body: [UInt8]) throws(ClientError) {
        var h = "\(method) \(path) HTTP/1.1\r\nHost: \(endpoint.hostHeader)\r\n"
        var hasCT = false
        for (k, v) in headers {
            // Header injection guard: no CR/LF in caller-supplied names or values.
            if k.contains(where: { $0 == "\r" || $0 == "\n" }) || v.contains(where: { $0 == "\r" || $0 == "\n" }) { continue }
            if k.lowercased() == "content-type" { hasCT = true }
            h += "\(k): \(v)\r\n"
        }
        if !body.isEmpty || method == "POST" || method == "PUT" {
            if !hasCT { h += "Content-Type: application/json\r\n" }
            h += "Content-Length: \(body.count)\r\n"
        }
        h += "\r\n"
        var bytes = Array(h.utf8)
        bytes.append(contentsOf: body)
        try writeAll(bytes)
    }

    private func writeAll(_ bytes: [UInt8]) throws(ClientError) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { p in
                send(fd, p.baseAddress! + off, p.count - off, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                if e == EAGAIN || e == EWOULDBLOCK { throw .timeout(phase: "sending the request", seconds: timeout) }
                if e == EPIPE || e == ECONNRESET { throw .connectionClosed(phase: "sending the request") }
                throw .system(op: "send", errno: e)
            }
            off += n
        }
    }

    /// Reads more bytes into `buf`; returns false at end of stream.
    private func fill(phase: String) throws(ClientError) -> Bool {
        if rpos > 0 && rpos == buf.count {
            buf.removeAll(keepingCapacity: true)
            rpos = 0
        } else if rpos > 65536 && rpos * 2 > buf.count {
            buf.removeFirst(rpos)
            rpos = 0
        }
        let old = buf.count
        buf.append(contentsOf: repeatElement(0, count: 65536))
        while true {
            let n = buf.withUnsafeMutableBytes { p in recv(fd, p.baseAddress! + old, 65536, 0) }
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                buf.removeLast(65536)
                if e == EAGAIN || e == EWOULDBLOCK { throw .timeout(phase: phase, seconds: timeout) }
                if e == ECONNRESET { throw .connectionClosed(phase: phase) }
                throw .system(op: "recv", errno: e)
            }
            buf.removeLast(65536 - n)
            return n > 0
        }
    }

    private func readHead() throws(ClientError) -> HTTPHead {
        while true {
            if let end = findCRLFCRLF() {
                let text = String(decoding: buf[rpos..<end], as: UTF8.self)
                rpos = end + 4
                return try Self.parseHead(text)
            }
            if buf.count - rpos > HTTPConnection.maxHeadBytes { throw .responseTooLarge(limit: HTTPConnection.maxHeadBytes) }
            let gotAny = buf.count > rpos
            guard try fill(phase: "the response head") else {
                throw gotAny ? .malformedResponse("connection closed inside the response head")
                    : .connectionClosed(phase: "the response head")
            }
        }
    }

    private func findCRLFCRLF() -> Int? {
        var i = rpos
        let n = buf.count
        while i + 3 < n {
            if buf[i] == 13 && buf[i + 1] == 10 && buf[i + 2] == 13 && buf[i + 3] == 10 { return i }
            i += 1
        }
        return nil
    }

    static func parseHead(_ text: String) throws(ClientError) -> HTTPHead {
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: false)
        guard !lines.isEmpty else { throw .malformedResponse("empty head") }
        let status = lines.removeFirst()
        let parts = status.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]), (100...999).contains(code)
        else { throw .malformedResponse("bad status line '\(status.prefix(100))'") }
        var fields: [HTTPHead.HeaderField] = []
        for l in lines where !l.isEmpty {
            guard let colon = l.firstIndex(of: ":") else { throw .malformedResponse("bad header line '\(l.prefix(100))'") }
            fields.append(.init(name: l[..<colon].lowercased(), value: String(l[l.index(after: colon)...]).trimmingSpaces))
        }
        return HTTPHead(status: code, reason: parts.count > 2 ? String(parts[2]) : "", headers: fields)
    }

    /// Reads the body per its framing; returns whether the connection can be reused.
    private func readBody(head: HTTPHead, method: String, onBody: (ArraySlice<UInt8>) -> Bool) throws(ClientError) -> Bool {
        let connClose = head.header("connection")?.lowercased().contains("close") ?? false
        if method == "HEAD" || head.status == 204 || head.status == 304 || (100..<200).contains(head.status) {
            return !connClose
        }
        if let te = head.header("transfer-encoding"), te.lowercased().contains("chunked") {
            while true {
                // chunk-size [; ext] CRLF
                let line = try readLine(phase: "a chunk size")
                let hex = line.split(separator: ";", maxSplits: 1).first.map { String($0).trimmingSpaces } ?? ""
                guard let size = Int(hex, radix: 16), size >= 0 else { throw .malformedResponse("bad chunk size '\(line.prefix(40))'") }
                if size == 0 {
                    // Trailers until an empty line.
                    while try !readLine(phase: "chunked trailers").isEmpty {}
                    return !connClose
                }
                var left = size
                while left > 0 {
                    if rpos == buf.count { guard try fill(phase: "the response body") else { throw .connectionClosed(phase: "a chunked body") } }
                    let take = min(left, buf.count - rpos)
                    let ok = onBody(buf[rpos..<(rpos + take)])
                    rpos += take
                    left -= take
                    if !ok { return false }
                }
                guard try readLine(phase: "a chunk end").isEmpty else { throw .malformedResponse("chunk not followed by CRLF") }
            }
        }
        if let cl = head.header("content-length") {
            guard let n = Int(cl), n >= 0 else { throw .malformedResponse("bad Content-Length '\(cl)'") }
            var left = n
            while left > 0 {
                if rpos == buf.count { guard try fill(phase: "the response body") else { throw .connectionClosed(phase: "the response body") } }
                let take = min(left, buf.count - rpos)
                let ok = onBody(buf[rpos..<(rpos + take)])
                rpos += take
                left -= take
                if !ok { return false }
            }
            return !connClose
        }
        // No framing: the body runs until the server closes.
        while true {
            if rpos < buf.count {
                let ok = onBody(buf[rpos..<buf.count])
                rpos = buf.count
                if !ok { return false }
            }
            guard try fill(phase: "the response body") else { return false }
        }
    }

    /// Reads one CRLF-terminated line (without the CRLF), at most 8 KiB.
    private func readLine(phase: String) throws(ClientError) -> String {
        while true {
            var i = rpos
            while i + 1 < buf.count {
                if buf[i] == 13 && buf[i + 1] == 10 {
                    let s = String(decoding: buf[rpos..<i], as: UTF8.self)
                    rpos = i + 2
                    return s
                }
                i += 1
            }
            if buf.count - rpos > 8192 { throw .malformedResponse("line too long while reading \(phase)") }
            guard try fill(phase: phase) else { throw .connectionClosed(phase: phase) }
        }
    }

    // MARK: - Sockets

    private static func setTimeouts(_ fd: Int32, _ seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    static func connectUnix(_ path: String, timeout: Double) throws(ClientError) -> Int32 {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let cap = MemoryLayout.size(ofValue: addr.sun_path)
        guard !bytes.isEmpty, bytes.count < cap else { throw .pathTooLong(path) }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(op: "socket", errno: errno) }
        setTimeouts(fd, timeout)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if rc != 0 {
            let e = errno
            _ = Glibc.close(fd)
            if e == ENOENT || e == ECONNREFUSED || e == ENOTSOCK { throw .noServer(path: path) }
            if e == EAGAIN || e == EINPROGRESS { throw .timeout(phase: "connect", seconds: timeout) }
            throw .system(op: "connect(\(path))", errno: e)
        }
        return fd
    }

    static func connectTCP(_ host: String, _ port: UInt16, timeout: Double) throws(ClientError) -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        let g = getaddrinfo(host, String(port), &hints, &res)
        guard g == 0, let first = res else {
            throw .resolveFailed(host: host, reason: String(cString: gai_strerror(g)))
        }
        defer { freeaddrinfo(res) }
        var lastErr: Int32 = ECONNREFUSED
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            ai = a.pointee.ai_next
            let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), a.pointee.ai_protocol)
            if fd < 0 { lastErr = errno; continue }
            setTimeouts(fd, timeout)  // SO_SNDTIMEO also bounds connect() on Linux
            if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 {
                var one: Int32 = 1
                _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                return fd
            }
            lastErr = errno
            _ = Glibc.close(fd)
        }
        if lastErr == ECONNREFUSED { throw .connectionRefused(endpoint: "\(host):\(port)") }
        if lastErr == EINPROGRESS || lastErr == EAGAIN || lastErr == ETIMEDOUT { throw .timeout(phase: "connect", seconds: timeout) }
        throw .system(op: "connect(\(host):\(port))", errno: lastErr)
    }
}

extension String {
    /// Without leading/trailing spaces and tabs.
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
