// Latency summaries over HdrHistogram: mean, p50, p90, p99, p99.9 in milliseconds.
import Histogram

/// A latency distribution recorded in microseconds (1 µs ... 1 h, 3 significant digits: values are exact to
/// within 0.1 %).
public struct LatencyHistogram: Sendable {
    public private(set) var histogram = Histogram<UInt64>(
        lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
    /// Values above the trackable range (clamped to it).
    public private(set) var clamped = 0

    public init() {}

    /// Records one latency in nanoseconds (rounded to µs, at least 1 µs).
    public mutating func record(ns: UInt64) {
        var us = (ns + 500) / 1000
        if us < 1 { us = 1 }
        if us > 3_600_000_000 {
            us = 3_600_000_000
            clamped += 1
        }
        _ = histogram.record(us)
    }

    public var count: Int { Int(histogram.totalCount) }

    public var summary: LatencySummary {
        guard count > 0 else { return LatencySummary(count: 0, meanMs: 0, p50Ms: 0, p90Ms: 0, p99Ms: 0, p999Ms: 0, maxMs: 0) }
        func ms(_ p: Double) -> Double { Double(histogram.valueAtPercentile(p)) / 1000 }
        return LatencySummary(
            count: count, meanMs: histogram.mean / 1000, p50Ms: ms(50), p90Ms: ms(90), p99Ms: ms(99), p999Ms: ms(99.9),
            maxMs: Double(histogram.max) / 1000)
    }

    /// (latency ms, cumulative fraction) points of the CDF, for plots.
    public func cdf(points: Int = 200) -> [(Double, Double)] {
        guard count > 0 else { return [] }
        var out: [(Double, Double)] = []
        for i in 0...points {
            let p = 100.0 * Double(i) / Double(points)
            out.append((Double(histogram.valueAtPercentile(p)) / 1000, p / 100))
        }
        return out
    }
}

/// Summary of one metric, in milliseconds.
public struct LatencySummary: Sendable, Hashable, Codable {
    public var count: Int
    public var meanMs: Double
    public var p50Ms: Double
    public var p90Ms: Double
    public var p99Ms: Double
    public var p999Ms: Double
    public var maxMs: Double

    /// JSON-ready dictionary with the names used by `--json`.
    public var json: [String: Any] {
        ["count": count, "mean_ms": meanMs, "p50_ms": p50Ms, "p90_ms": p90Ms, "p99_ms": p99Ms, "p99_9_ms": p999Ms,
         "max_ms": maxMs]
    }
}
