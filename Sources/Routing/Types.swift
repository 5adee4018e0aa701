// Public value types of the Routing module: policies, peers, targets, tickets, answers, errors.

/// How the front chooses a target (worker or tensor-parallel group) for a request. The raw values are the
/// names `switchyard serve --policy` accepts.
public enum RoutingPolicy: String, Sendable, CaseIterable, Hashable {
    /// Rendezvous (highest random weight) hashing of the session key with bounded loads (factor c).
    /// Requests without a key fall back to least-connections. The default.
    case consistentHash = "consistent-hash"
    /// Targets in turn (smooth weighted round-robin when weights differ).
    case roundRobin = "round-robin"
    /// Fewest requests in flight (per unit of weight); ties broken round-robin.
    case leastConnections = "least-connections"
    /// Rendezvous hashing of the peer's identity (uid for Unix-socket clients, IP for TCP). No bounded load:
    /// a peer stays on its home target until that target is full (hard capacity) or unhealthy.
    case clientHash = "client-hash"

    public static let `default` = RoutingPolicy.consistentHash
}

/// Who is on the other end of a client connection; the key of `.clientHash`.
public enum PeerIdentity: Sendable, Hashable {
    /// Unix-socket client, identified by its SO_PEERCRED uid (never a constant for all Unix clients).
    case unix(uid: UInt32)
    /// IPv4 client. The address as a host integer, 127.0.0.1 == 0x7f00_0001.
    case ipv4(UInt32)
    /// IPv6 client. The 16 address bytes in network order: `high` holds bytes 0..7 (big-endian), `low` 8..15.
    case ipv6(high: UInt64, low: UInt64)
    /// Identity not known (e.g. SO_PEERCRED failed). Treated as keyless: least-connections.
    case unknown

    /// The fixed 64-bit routing hash of this peer, or nil for `.unknown`. Each case is domain-separated by a
    /// tag so a uid and an IPv4 address with the same integer value do not collide.
    @inlinable
    public var routingHash: UInt64? {
        switch self {
        case .unix(let uid): return RouteHash.mix64(UInt64(uid) ^ 0x756e_6978_0000_0000)  // "unix"
        case .ipv4(let a): return RouteHash.mix64(UInt64(a) ^ 0x6970_7634_0000_0000)  // "ipv4"
        case .ipv6(let hi, let lo): return RouteHash.mix64(RouteHash.mix64(hi ^ 0x6970_7636_0000_0000) ^ lo)
        case .unknown: return nil
        }
    }
}

/// Configuration of one target.
public struct TargetSpec: Sendable, Hashable {
    /// Stable id ("w0", "tp-group-1"...). The hash of the id, not its position, decides which keys the target
    /// owns, so ids must stay the same across restarts for sessions to keep their homes.
    public var id: String
    /// Relative weight, 1 ... `Router.maxWeight`. Share of keys, round-robin turns and bounded-load cap are
    /// proportional to it.
    public var weight: UInt32
    /// Hard limit of requests in flight (e.g. the worker's ring depth), >= 1. Every policy respects it; when
    /// every healthy target is at it, admission answers `.overloaded`.
    public var capacity: Int

    public init(id: String, weight: UInt32 = 1, capacity: Int = Int.max) {
        self.id = id
        self.weight = weight
        self.capacity = capacity
    }
}

/// Health of a target as the front sees it.
public enum TargetHealth: UInt8, Sendable, Hashable {
    /// Receives new requests.
    case healthy = 0
    /// Finishes what it has, receives nothing new. Its keys go to their next-ranked target meanwhile.
    case draining = 1
    /// Receives nothing. Its keys go to their next-ranked target and come back when it is healthy again.
    case dead = 2
}

/// Proof of one admission. The holder must call `Router.release(_:)` exactly once when the request finishes
/// (completed, failed or cancelled), which decrements the target's in-flight count.
public struct Ticket: Sendable, Hashable {
    /// Slot index of the chosen target (stable while the target is registered; see `Router.slot(of:)`).
    public let target: Int
    /// Slot generation at admission; a ticket for a since-removed target is ignored by `release`.
    @usableFromInline let generation: UInt32

    @usableFromInline init(target: Int, generation: UInt32) {
        self.target = target
        self.generation = generation
    }
}

/// Answer of `Router.admit`.
public enum Admission: Sendable, Hashable {
    /// Send the request to `ticket.target`; release the ticket when it finishes.
    case admitted(Ticket)
    /// Every healthy target is at its hard capacity. The front answers 503 with Retry-After.
    case overloaded
    /// No target is healthy (none registered, or all draining/dead). The front answers 503.
    case unavailable

    /// The ticket when admitted.
    @inlinable public var ticket: Ticket? {
        if case .admitted(let t) = self { return t }
        return nil
    }
}

/// Invalid router configuration or target operations.
public enum RoutingError: Error, Hashable, CustomStringConvertible {
    case unknownPolicy(String)
    case invalidBalanceFactor(Double)
    case invalidWeight(id: String, weight: UInt32)
    case invalidCapacity(id: String, capacity: Int)
    case emptyTargetID
    case duplicateTarget(String)
    case unknownTarget(String)
    case tooManyTargets(limit: Int)

    public var description: String {
        switch self {
        case .unknownPolicy(let s):
            return "unknown routing policy '\(s)' (expected one of: "
                + RoutingPolicy.allCases.map(\.rawValue).joined(separator: ", ") + ")"
        case .invalidBalanceFactor(let c):
            return "balance factor \(c) out of range (expected \(Router.minBalanceFactor) ... \(Router.maxBalanceFactor))"
        case .invalidWeight(let id, let w):
            return "target '\(id)': weight \(w) out of range (expected 1 ... \(Router.maxWeight))"
        case .invalidCapacity(let id, let c):
            return "target '\(id)': capacity \(c) must be >= 1"
        case .emptyTargetID: return "target id must not be empty"
        case .duplicateTarget(let id): return "target '\(id)' is already registered"
        case .unknownTarget(let id): return "no target '\(id)'"
        case .tooManyTargets(let n): return "too many targets (limit \(n))"
        }
    }
}

extension RoutingPolicy {
    /// Parses a `--policy` name; throws `RoutingError.unknownPolicy` naming the accepted values.
    public static func parse(_ name: String) throws(RoutingError) -> RoutingPolicy {
        guard let p = RoutingPolicy(rawValue: name) else { throw .unknownPolicy(name) }
        return p
    }
}
