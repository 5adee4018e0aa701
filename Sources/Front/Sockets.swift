// Listening-socket setup: Unix socket (stale-file handling, mode), optional TCP, systemd socket activation.
import CSwitchyardSys
import Glibc

public enum FrontError: Error, Equatable, CustomStringConvertible {
    case socketPathTooLong(String)
    case liveServer(String)
    case notASocket(String)
    case invalidTCPAddress(String)
    case system(String, Int32)

    public var description: String {
        switch self {
        case .socketPathTooLong(let p): return "socket path too long (max 107 bytes): \(p)"
        case .liveServer(let p): return "another server is listening on \(p)"
        case .notASocket(let p): return "\(p) exists and is not a socket; refusing to replace it"
        case .invalidTCPAddress(let a): return "invalid --tcp address '\(a)' (expected HOST:PORT)"
        case .system(let call, let e): return "\(call): \(String(cString: strerror(e)))"
        }
    }
}

public struct Listener: Sendable {
    public enum Family: Sendable, Equatable { case unix, tcp }
    public var fd: Int32
    public var family: Family
    /// The Unix socket file this process created (removed at shutdown); nil for TCP and systemd sockets.
    public var ownedPath: String?
    /// Bound TCP port (useful with port 0).
    public var port: UInt16?
}

enum Sockets {
    static func makeUnixAddress(_ path: String) throws(FrontError) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let cap = MemoryLayout.size(ofValue: addr.sun_path)
        if bytes.isEmpty || bytes.count >= cap { throw .socketPathTooLong(path) }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        return addr
    }

    /// Binds and listens on a Unix socket at `path`. An existing socket file is probed with connect():
    /// ECONNREFUSED means its server is gone (stale: unlinked and replaced); success means a live server
    /// (an error). Any other kind of file is never removed.
    static func listenUnix(path: String, mode: mode_t, backlog: Int32) throws(FrontError) -> Listener {
        var addr = try makeUnixAddress(path)
        var st = stat()
        if lstat(path, &st) == 0 {
            if (st.st_mode & S_IFMT) != S_IFSOCK { throw .notASocket(path) }
            let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if probe < 0 { throw .system("socket", errno) }
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(probe, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            let e = errno
            close(probe)
            if rc == 0 { throw .liveServer(path) }
            if e == ECONNREFUSED {
                unlink(path)
            } else if e != ENOENT {
                throw .system("connect(\(path))", e)
            }
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw .system("socket", errno) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if rc != 0 { let e = errno; close(fd); throw .system("bind(\(path))", e) }
        if chmod(path, mode) != 0 { let e = errno; close(fd); unlink(path); throw .system("chmod(\(path))", e) }
        if listen(fd, backlog) != 0 { let e = errno; close(fd); unlink(path); throw .system("listen", e) }
        return Listener(fd: fd, family: .unix, ownedPath: path, port: nil)
    }

    /// HOST:PORT, HOST being an IPv4/IPv6 literal or a name ("[::1]:8080" for IPv6 literals).
    static func listenTCP(_ spec: String, backlog: Int32) throws(FrontError) -> Listener {
        guard let colon = spec.lastIndex(of: ":") else { throw .invalidTCPAddress(spec) }
        var host = String(spec[..<colon])
        let portText = String(spec[spec.index(after: colon)...])
        guard let port = UInt16(portText) else { throw .invalidTCPAddress(spec) }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host.isEmpty { host = "0.0.0.0" }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var res: UnsafeMutablePointer<addrinfo>? = nil
        if getaddrinfo(host, portText, &hints, &res) != 0 { throw .invalidTCPAddress(spec) }
        defer { freeaddrinfo(res) }
        guard let ai = res else { throw .invalidTCPAddress(spec) }
        let fd = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw .system("socket", errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if bind(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) != 0 { let e = errno; close(fd); throw .system("bind(\(spec))", e) }
        if listen(fd, backlog) != 0 { let e = errno; close(fd); throw .system("listen", e) }
        _ = port
        return Listener(fd: fd, family: .tcp, ownedPath: nil, port: boundPort(fd))
    }

    static func boundPort(_ fd: Int32) -> UInt16? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        if rc != 0 { return nil }
        switch Int32(ss.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) } }
        case AF_INET6:
            return withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) } }
        default: return nil
        }
    }

    /// Sockets passed by systemd (LISTEN_PID = our pid, LISTEN_FDS = n → fds 3…3+n-1), used as they are.
    static func systemdListeners() -> [Listener] {
        guard let pidText = getenv("LISTEN_PID"), let fdsText = getenv("LISTEN_FDS"),
              let pid = Int32(String(cString: pidText)), pid == getpid(),
              let n = Int32(String(cString: fdsText)), n > 0, n < 64 else { return [] }
        unsetenv("LISTEN_PID"); unsetenv("LISTEN_FDS"); unsetenv("LISTEN_FDNAMES")
        var out: [Listener] = []
        for fd in 3..<(3 + n) {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            var ss = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let rc = withUnsafeMutablePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
            }
            if rc != 0 { continue }
            let family: Listener.Family = Int32(ss.ss_family) == AF_UNIX ? .unix : .tcp
            out.append(Listener(fd: fd, family: family, ownedPath: nil, port: family == .tcp ? boundPort(fd) : nil))
        }
        return out
    }

    /// SO_PEERCRED for Unix clients, the numeric address for TCP clients.
    static func peerIdentity(_ fd: Int32, family: Listener.Family) -> PeerIdentity {
        switch family {
        case .unix:
            var uid: UInt32 = 0
            var pid: Int32 = 0
            if sy_peer_cred(fd, &uid, &pid) == 0 { return .unix(uid: uid, pid: pid) }
            return .unknown
        case .tcp:
            var ss = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let rc = withUnsafeMutablePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
            }
            if rc != 0 { return .unknown }
            var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            let ok = withUnsafePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    getnameinfo($0, len, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST)
                }
            }
            if ok != 0 { return .unknown }
            return .tcp(address: String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
    }
}
