// Typed errors of ClientKit, each with a message a person can act on.

/// What went wrong talking to a server.
public enum ClientError: Error, Hashable, CustomStringConvertible {
    /// The Unix socket path does not exist or nothing listens on it (ENOENT / ECONNREFUSED).
    case noServer(path: String)
    /// TCP connect refused.
    case connectionRefused(endpoint: String)
    /// Host name did not resolve.
    case resolveFailed(host: String, reason: String)
    /// `--url` not of the form http://host:port[/...].
    case invalidURL(String)
    /// Unix socket path longer than sun_path allows.
    case pathTooLong(String)
    /// A system call failed.
    case system(op: String, errno: Int32)
    /// No progress within the timeout while `phase` (connect, send, response head, body).
    case timeout(phase: String, seconds: Double)
    /// The server closed the connection before the response was complete.
    case connectionClosed(phase: String)
    /// The server sent something that is not HTTP/1.1 as we know it.
    case malformedResponse(String)
    /// Head or body larger than the client accepts.
    case responseTooLarge(limit: Int)
    /// 503 while the server is still loading its model.
    case serverLoading(retryAfter: Int?)
    /// 503 because every worker is busy.
    case overloaded(retryAfter: Int?)
    /// Any other non-2xx status.
    case httpStatus(code: Int, body: String)
    /// A stream that had started ended with an SSE error event (`data: {"error":{...}}`), e.g. its worker died.
    case streamError(message: String)
    /// A JSON body could not be built or parsed.
    case badJSON(String)

    public var description: String {
        switch self {
        case .noServer(let p): return "no server at \(p) (is `switchyard serve` running?)"
        case .connectionRefused(let e): return "connection refused by \(e) (is the server running?)"
        case .resolveFailed(let h, let r): return "cannot resolve host '\(h)': \(r)"
        case .invalidURL(let u): return "invalid URL '\(u)' (expected http://HOST:PORT)"
        case .pathTooLong(let p): return "socket path too long (\(p.utf8.count) bytes, limit 107): \(p)"
        case .system(let op, let e): return "\(op) failed: \(String(cString: strerror(e))) (errno \(e))"
        case .timeout(let phase, let s): return "timed out after \(s) s waiting for \(phase)"
        case .connectionClosed(let phase): return "server closed the connection during \(phase)"
        case .malformedResponse(let m): return "malformed HTTP response: \(m)"
        case .responseTooLarge(let l): return "response larger than \(l) bytes"
        case .serverLoading(let ra):
            return "server is still loading the model (503)" + (ra.map { "; retry after \($0) s" } ?? "")
        case .overloaded(let ra):
            return "server overloaded (503)" + (ra.map { "; retry after \($0) s" } ?? "")
        case .httpStatus(let c, let b): return "HTTP \(c): \(b.prefix(500))"
        case .streamError(let m): return "the server ended the stream with an error: \(m.prefix(500))"
        case .badJSON(let m): return "bad JSON: \(m)"
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
