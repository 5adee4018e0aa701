// A small Prometheus metrics registry (text exposition format 0.0.4). Counters, gauges and histograms with
// labels; thread-safe (one mutex), so a backend may feed it from its own threads too. Series are kept in
// first-use order so the output is stable. The registry is bounded by its callers' label sets (routes ×
// statuses, workers), never by request ids.
import Synchronization

public final class MetricsRegistry: Sendable {
    public enum Kind: String, Sendable { case counter, gauge, histogram }

    /// Latency buckets (seconds) used for TTFT and inter-token histograms.
    public static let latencyBuckets: [Double] = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
    ]

    // Names the front writes.
    public static let requests = "switchyard_requests_total"
    public static let tokensGenerated = "switchyard_tokens_generated_total"
    public static let ttft = "switchyard_time_to_first_token_seconds"
    public static let interToken = "switchyard_inter_token_seconds"
    public static let openConnections = "switchyard_open_connections"
    public static let inFlight = "switchyard_requests_in_flight"
    // Names a backend writes in collectMetrics (label "worker").
    public static let workerInFlight = "switchyard_worker_in_flight"
    public static let workerQueueDepth = "switchyard_worker_queue_depth"
    public static let workerRestarts = "switchyard_worker_restarts_total"
    public static let workerReady = "switchyard_worker_ready"
    /// Labels "worker" and "ring" (request|response); value = occupied fraction 0…1.
    public static let ringOccupancy = "switchyard_ring_occupancy"

    private struct Series {
        var labels: String          // rendered `{a="x",b="y"}` or ""
        var value: Double = 0       // counter / gauge
        /// Observations per bucket, not cumulative: each lands in the first bucket (ascending) it fits, and
        /// render() sums them into Prometheus's cumulative `le` counts. One increment per observation.
        var bucketCounts: [UInt64] = []
        var sum: Double = 0
        var count: UInt64 = 0

        mutating func observe(_ value: Double, buckets: [Double]) {
            if bucketCounts.isEmpty { bucketCounts = Array(repeating: 0, count: buckets.count) }
            if let k = buckets.firstIndex(where: { value <= $0 }), k < bucketCounts.count { bucketCounts[k] += 1 }
            sum += value
            count += 1
        }
    }

    private struct Family {
        var name: String
        var help: String
        var kind: Kind
        var buckets: [Double]
        var series: [Series] = []
        var index: [String: Int] = [:]
    }

    private struct State {
        var families: [Family] = []
        var index: [String: Int] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    public func add(_ name: String, help: String = "", labels: [(String, String)] = [], _ delta: Double = 1) {
        update(name, help: help, kind: .counter, buckets: [], labels: labels) { $0.value += delta }
    }

    public func set(_ name: String, help: String = "", labels: [(String, String)] = [], _ value: Double) {
        update(name, help: help, kind: .gauge, buckets: [], labels: labels) { $0.value = value }
    }

    public func observe(_ name: String, help: String = "", buckets: [Double] = MetricsRegistry.latencyBuckets,
                        labels: [(String, String)] = [], _ value: Double) {
        let ascending = buckets.sorted()   // the family keeps its buckets ascending (by-name calls are not hot)
        update(name, help: help, kind: .histogram, buckets: ascending, labels: labels) { s in
            s.observe(value, buckets: ascending)
        }
    }

    /// One resolved series (family and series index). Families and series are only ever appended, so a
    /// handle stays valid for the registry's life; updating through it skips rendering the labels and the
    /// two dictionary lookups (the per-request path).
    public struct Handle: Sendable, Hashable {
        fileprivate let family: Int
        fileprivate let series: Int
    }

    /// The series `name{labels}` of `kind` (created if new, exactly as the first update would create it), or
    /// nil if `name` already exists with another kind (updates of such a name are ignored).
    public func handle(_ name: String, help: String = "", kind: Kind, buckets: [Double] = [],
                       labels: [(String, String)] = []) -> Handle? {
        var h: Handle?
        update(name, help: help, kind: kind, buckets: buckets, labels: labels) { _ in } resolved: { h = $0 }
        return h
    }

    /// Adds to a counter through its handle.
    public func add(_ h: Handle, _ delta: Double = 1) {
        state.withLock { $0.families[h.family].series[h.series].value += delta }
    }

    /// Records one observation of a histogram through its handle (the family's own buckets).
    public func observe(_ h: Handle, _ value: Double) {
        state.withLock { st in
            let buckets = st.families[h.family].buckets
            st.families[h.family].series[h.series].observe(value, buckets: buckets)
        }
    }

    /// Sets a gauge through its handle.
    public func set(_ h: Handle, _ value: Double) {
        state.withLock { $0.families[h.family].series[h.series].value = value }
    }

    /// Current value of a counter or gauge series (tests, health decisions).
    public func value(_ name: String, labels: [(String, String)] = []) -> Double? {
        let key = Self.renderLabels(labels)
        return state.withLock { st in
            guard let f = st.index[name], let s = st.families[f].index[key] else { return nil }
            return st.families[f].series[s].value
        }
    }

    /// Observation count of a histogram series.
    public func histogramCount(_ name: String, labels: [(String, String)] = []) -> UInt64? {
        let key = Self.renderLabels(labels)
        return state.withLock { st in
            guard let f = st.index[name], let s = st.families[f].index[key] else { return nil }
            return st.families[f].series[s].count
        }
    }

    public func render() -> String {
        state.withLock { st in
            var out = ""
            for f in st.families {
                if !f.help.isEmpty { out += "# HELP \(f.name) \(f.help)\n" }
                out += "# TYPE \(f.name) \(f.kind.rawValue)\n"
                for s in f.series {
                    switch f.kind {
                    case .counter, .gauge:
                        out += "\(f.name)\(s.labels) \(Self.format(s.value))\n"
                    case .histogram:
                        var cumulative: UInt64 = 0
                        for (k, b) in f.buckets.enumerated() {
                            cumulative += k < s.bucketCounts.count ? s.bucketCounts[k] : 0
                            out += "\(f.name)_bucket\(Self.withLabel(s.labels, "le", Self.format(b))) \(cumulative)\n"
                        }
                        out += "\(f.name)_bucket\(Self.withLabel(s.labels, "le", "+Inf")) \(s.count)\n"
                        out += "\(f.name)_sum\(s.labels) \(Self.format(s.sum))\n"
                        out += "\(f.name)_count\(s.labels) \(s.count)\n"
                    }
                }
            }
            return out
        }
    }

    private func update(_ name: String, help: String, kind: Kind, buckets: [Double], labels: [(String, String)],
                        _ body: (inout Series) -> Void, resolved: (Handle) -> Void = { _ in }) {
        let key = Self.renderLabels(labels)
        state.withLock { st in
            let fi: Int
            if let i = st.index[name] {
                fi = i
            } else {
                fi = st.families.count
                st.families.append(Family(name: name, help: help, kind: kind, buckets: buckets.sorted()))   // ascending `le`
                st.index[name] = fi
            }
            // A name keeps the kind it was first used with; a mismatched update is ignored.
            guard st.families[fi].kind == kind else { return }
            if st.families[fi].help.isEmpty && !help.isEmpty { st.families[fi].help = help }
            let si: Int
            if let i = st.families[fi].index[key] {
                si = i
            } else {
                si = st.families[fi].series.count
                st.families[fi].series.append(Series(labels: key))
                st.families[fi].index[key] = si
            }
            body(&st.families[fi].series[si])
            resolved(Handle(family: fi, series: si))
        }
    }

    static func renderLabels(_ labels: [(String, String)]) -> String {
        if labels.isEmpty { return "" }
        var s = "{"
        for (k, (name, value)) in labels.enumerated() {
            if k > 0 { s += "," }
            s += name + "=\"" + escape(value) + "\""
        }
        return s + "}"
    }

    static func withLabel(_ rendered: String, _ name: String, _ value: String) -> String {
        if rendered.isEmpty { return "{\(name)=\"\(value)\"}" }
        return String(rendered.dropLast()) + ",\(name)=\"\(value)\"}"
    }

    static func escape(_ v: String) -> String {
        var out = ""
        for c in v {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }

    static func format(_ v: Double) -> String {
        if v == v.rounded() && abs(v) < 1e15 { return String(Int64(v)) }
        return String(v)
    }
}
