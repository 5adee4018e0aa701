// Request helpers over ClientKit, plus a raw Unix-socket connection for pipelining and malformed input.
import ClientKit
import Foundation
import Glibc
import Testing

/// JSON object of a body (nil if it is not one).
func jsonObject(_ bytes: [UInt8]) -> [String: Any]? {
    try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]
}

func jsonObject(_ text: String) -> [String: Any]? { jsonObject(Array(text.utf8)) }

func jsonBytes(_ o: [String: Any]) -> [UInt8] {
    (try? Array(JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]))) ?? []
}

extension Server {
    /// One request on a fresh connection.
    func request(_ method: String, _ path: String, json: [String: Any]? = nil, body: [UInt8]? = nil,
                 headers: [(String, String)] = [], timeout: Double = 30) throws -> HTTPResponse {
        let c = HTTPConnection(endpoint: endpoint, timeout: timeout)
        defer { c.close() }
        return try c.request(method: method, path: path, headers: headers, body: body ?? json.map(jsonBytes) ?? [])
    }
}

/// A streamed (SSE) response: every `data:` payload in order (including "[DONE]").
struct StreamedResponse {
    var head: HTTPHead
    var events: [String] = []
    /// Bytes of a non-SSE body (an error before streaming started).
    var body: [UInt8] = []

    var objects: [[String: Any]] { events.filter { $0 != "[DONE]" }.compactMap { jsonObject($0) } }
    var endsWithDone: Bool { events.last == "[DONE]" }
    /// Concatenated text of completion (`choices[0].text`) or chat (`choices[0].delta.content`) chunks.
    var text: String {
        objects.reduce(into: "") { s, o in
            guard let c = (o["choices"] as? [[String: Any]])?.first else { return }
            if let t = c["text"] as? String { s += t }
            if let t = (c["delta"] as? [String: Any])?["content"] as? String { s += t }
        }
    }
    var finishReason: String? {
        objects.compactMap { ($0["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String }.last
    }
    var usage: [String: Any]? { objects.compactMap { $0["usage"] as? [String: Any] }.last }
    /// Error events (`{"error":{…}}`).
    var errors: [[String: Any]] { objects.compactMap { $0["error"] as? [String: Any] } }
}

/// Sends a request and parses the SSE body as it arrives; `onEvent(index, data)` sees each event and may
/// return false to stop reading.
func streamRequest(_ conn: HTTPConnection, path: String, json: [String: Any], headers: [(String, String)] = [],
                   onHead: (HTTPHead) -> Void = { _ in },
                   onEvent: (Int, String) -> Bool = { _, _ in true }) throws -> StreamedResponse {
    var parser = SSEParser()
    var events: [String] = []
    var body: [UInt8] = []
    var isSSE = false
    let head = try conn.stream(method: "POST", path: path, headers: [("Accept", "text/event-stream")] + headers,
                               body: jsonBytes(json)) { chunk in
        guard isSSE else { body.append(contentsOf: chunk); return true }
        return parser.feed(chunk, now: monotonicNanos()) { ev in
            events.append(ev.data)
            return onEvent(events.count - 1, ev.data)
        }
    } onHead: { h in
        isSSE = (h.header("content-type") ?? "").contains("text/event-stream")
        onHead(h)
    }
    return StreamedResponse(head: head, events: events, body: body)
}

/// Checks an OpenAI-style error body `{"error":{"message": String, "type": String, "code": …}}`.
func expectOpenAIError(_ r: HTTPResponse, status: Int, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    expectOpenAIError(status: r.head.status, contentType: r.head.header("content-type"), body: r.body, expected: status, what,
                      sourceLocation: sourceLocation)
}

func expectOpenAIError(_ r: RawConnection.Response, status: Int, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    expectOpenAIError(status: r.status, contentType: r.headers["content-type"], body: r.body, expected: status, what,
                      sourceLocation: sourceLocation)
}

func expectOpenAIError(status got: Int, contentType: String?, body: [UInt8], expected status: Int, _ what: String,
                       sourceLocation: SourceLocation) {
    let text = String(decoding: body, as: UTF8.self)
    #expect(got == status, "\(what): status \(got), body \(text)", sourceLocation: sourceLocation)
    let err = jsonObject(body)?["error"] as? [String: Any]
    #expect(err != nil, "\(what): body is not {\"error\":{…}}: \(text)", sourceLocation: sourceLocation)
    if let err {
        #expect((err["message"] as? String).map { !$0.isEmpty } == true, "\(what): error.message missing: \(text)", sourceLocation: sourceLocation)
        #expect(err["type"] is String, "\(what): error.type missing: \(text)", sourceLocation: sourceLocation)
        #expect(err.keys.contains("code"), "\(what): error.code missing: \(text)", sourceLocation: sourceLocation)
    }
    #expect((contentType ?? "").contains("application/json"), "\(what): content-type \(contentType ?? "none")", sourceLocation: sourceLocation)
}

/// A raw connection: write arbitrary bytes, read responses with a minimal HTTP/1.1 parser
/// (Content-Length or chunked bodies).
final class RawConnection {
    let fd: Int32
    /// Received bytes not yet consumed: buf[pos...].
    private var buf: [UInt8] = []
    private var pos = 0

    struct Response {
        var status: Int
        var headers: [String: String]   // lower-cased names
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    init(path: String, timeout: Double = 10) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket: errno \(errno)") }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { let e = errno; Glibc.close(fd); throw HarnessError("connect \(path): errno \(e)") }
    }

    deinit { Glibc.close(fd) }

    /// Writes everything; returns false if the peer closed (EPIPE/ECONNRESET).
    @discardableResult
    func write(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 { if errno == EINTR { continue }; return false }
            off += n
        }
        return true
    }

    @discardableResult
    func write(_ s: String) -> Bool { write(Array(s.utf8)) }

    /// Reads more; false at EOF or error.
    private func fill() -> Bool {
        if pos > 0 {   // drop consumed bytes before growing
            buf.removeFirst(pos)
            pos = 0
        }
        var tmp = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = tmp.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 65536, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            buf.append(contentsOf: tmp[0..<n])
            return true
        }
    }

    private func readLine() throws -> String {
        var scanned = 0   // bytes after `pos` already searched (relative: fill() may move `pos`)
        while true {
            var i = pos + scanned
            while i + 1 < buf.count {
                if buf[i] == 13 && buf[i + 1] == 10 {
                    let line = String(decoding: buf[pos..<i], as: UTF8.self)
                    pos = i + 2
                    return line
                }
                i += 1
            }
            scanned = max(0, buf.count - 1 - pos)
            guard fill() else { throw HarnessError("connection closed while reading a line") }
        }
    }

    /// Reads one response (nil if the server closed the connection before one began).
    func readResponse() throws -> Response? {
        if buf.count == pos && !fill() { return nil }
        let statusLine = try readLine()
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else { throw HarnessError("bad status line: \(statusLine)") }
        var headers: [String: String] = [:]
        while true {
            let l = try readLine()
            if l.isEmpty { break }
            if let c = l.firstIndex(of: ":") {
                headers[l[..<c].lowercased()] = l[l.index(after: c)...].trimmingCharacters(in: .whitespaces)
            }
        }
        var body: [UInt8] = []
        if headers["transfer-encoding"]?.lowercased().contains("chunked") == true {
            while true {
                let sizeLine = try readLine()
                guard let n = Int(sizeLine.split(separator: ";").first ?? "", radix: 16) else { throw HarnessError("bad chunk size \(sizeLine)") }
                if n == 0 { while try !readLine().isEmpty {}; break }
                while buf.count - pos < n + 2 { guard fill() else { throw HarnessError("closed inside a chunk") } }
                body += buf[pos..<(pos + n)]
                pos += n + 2
            }
        } else if let cl = headers["content-length"], let n = Int(cl) {
            while buf.count - pos < n { guard fill() else { throw HarnessError("closed inside a body") } }
            body = Array(buf[pos..<(pos + n)])
            pos += n
        }
        return Response(status: status, headers: headers, body: body)
    }

    /// True when the server closes its side (recv returns 0) before the receive timeout; data before
    /// the EOF is discarded.
    func readsEOF() -> Bool {
        var tmp = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = tmp.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 65536, 0) }
            if n < 0 && errno == EINTR { continue }
            if n == 0 { return true }
            if n < 0 { return errno == ECONNRESET }
        }
    }
}
