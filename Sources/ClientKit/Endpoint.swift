/// Where a server listens.
public enum Endpoint: Sendable, Hashable, CustomStringConvertible {
    /// A Unix-domain stream socket path.
    case unix(path: String)
    /// TCP host (name or address) and port.
    case tcp(host: String, port: UInt16)

    /// Parses `http://host:port[/anything]` (port defaults to 80). https is not supported.
    public static func parse(url: String) throws(ClientError) -> Endpoint {
        guard url.hasPrefix("http://") else { throw .invalidURL(url) }
        var rest = Substring(url.dropFirst("http://".count))
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        guard !rest.isEmpty else { throw .invalidURL(url) }
        var host = rest
        var port: UInt16 = 80
        if rest.hasPrefix("[") {  // [v6]:port
            guard let close = rest.firstIndex(of: "]") else { throw .invalidURL(url) }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = UInt16(after.dropFirst()) else { throw .invalidURL(url) }
                port = p
            } else if !after.isEmpty { throw .invalidURL(url) }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            guard let p = UInt16(rest[rest.index(after: colon)...]) else { throw .invalidURL(url) }
            port = p
        }
        guard !host.isEmpty else { throw .invalidURL(url) }
        return .tcp(host: String(host), port: port)
    }

    /// Value of the Host header.
    public var hostHeader: String {
        switch self {
        case .unix: return "localhost"
        case .tcp(let h, let p): return h.contains(":") ? "[\(h)]:\(p)" : "\(h):\(p)"
        }
    }

    public var description: String {
        switch self {
        case .unix(let p): return "unix:\(p)"
        case .tcp: return "http://\(hostHeader)"
        }
    }
}

