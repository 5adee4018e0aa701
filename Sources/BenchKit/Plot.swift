// A self-contained SVG report: latency CDFs (TTFT, TPOT, ITL, E2E) and TTFT over time. Opens in any browser.

public enum SVGPlot {
    /// One plotted series.
    public struct Series: Sendable {
        public var name: String
        public var points: [(Double, Double)]
        public init(name: String, points: [(Double, Double)]) {
            self.name = name
            self.points = points
        }
    }

    static let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]

    /// The full report: a 2×2 grid of CDFs and a TTFT-over-time scatter below. `runs` lets several policies
    /// share one plot (one colour each).
    public static func report(title: String, runs: [(name: String, summary: BenchSummary, ttftOverTime: [(Double, Double)])]) -> String {
        let w = 960.0, h = 980.0
        var svg = #"<svg xmlns="http://www.w3.org/2000/svg" width="\#(Int(w))" height="\#(Int(h))" viewBox="0 0 \#(Int(w)) \#(Int(h))" font-family="sans-serif" font-size="12">"#
        svg += "\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        svg += "<text x=\"\(w / 2)\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">\(escape(title))</text>\n"
        let panels: [(String, KeyPath<BenchSummary, LatencyHistogram>)] = [
            ("TTFT (ms)", \.ttftHist), ("TPOT, first token excluded (ms)", \.tpotHist),
            ("ITL per streamed chunk (ms)", \.itlHist), ("E2E (ms)", \.e2eHist),
        ]
        for (i, p) in panels.enumerated() {
            let x = 60.0 + Double(i % 2) * 460, y = 50.0 + Double(i / 2) * 310
            let series = runs.map { Series(name: $0.name, points: $0.summary[keyPath: p.1].cdf()) }
            svg += panel(x: x, y: y, w: 400, h: 250, title: "CDF of " + p.0, xLabel: "ms", yLabel: "fraction",
                         series: series, line: true, yMax: 1)
        }
        let series = runs.map { Series(name: $0.name, points: $0.ttftOverTime) }
        svg += panel(x: 60, y: 690, w: 860, h: 240, title: "TTFT over time", xLabel: "seconds since start",
                     yLabel: "TTFT ms", series: series, line: false, yMax: nil)
        svg += "</svg>\n"
        return svg
    }

    /// One axis box with series drawn as polylines (CDF) or dots (scatter).
    static func panel(x: Double, y: Double, w: Double, h: Double, title: String, xLabel: String, yLabel: String,
                      series: [Series], line: Bool, yMax: Double?) -> String {
        let all = series.flatMap(\.points).filter { $0.0.isFinite && $0.1.isFinite }
        let xmax = nice(max(all.map(\.0).max() ?? 1, 1e-9))
        let ymax = yMax ?? nice(max(all.map(\.1).max() ?? 1, 1e-9))
        func px(_ v: Double) -> Double { x + v / xmax * w }
        func py(_ v: Double) -> Double { y + h - v / ymax * h }
        var s = "<g>\n<text x=\"\(x + w / 2)\" y=\"\(y - 8)\" text-anchor=\"middle\" font-weight=\"bold\">\(escape(title))</text>\n"
        s += "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(w)\" height=\"\(h)\" fill=\"none\" stroke=\"#444\"/>\n"
        for k in 0...4 {
            let fx = Double(k) / 4
            s += "<line x1=\"\(px(fx * xmax))\" y1=\"\(y)\" x2=\"\(px(fx * xmax))\" y2=\"\(y + h)\" stroke=\"#ddd\"/>\n"
            s += "<text x=\"\(px(fx * xmax))\" y=\"\(y + h + 14)\" text-anchor=\"middle\">\(label(fx * xmax))</text>\n"
            s += "<line x1=\"\(x)\" y1=\"\(py(fx * ymax))\" x2=\"\(x + w)\" y2=\"\(py(fx * ymax))\" stroke=\"#ddd\"/>\n"
            s += "<text x=\"\(x - 4)\" y=\"\(py(fx * ymax) + 4)\" text-anchor=\"end\">\(label(fx * ymax))</text>\n"
        }
        s += "<text x=\"\(x + w / 2)\" y=\"\(y + h + 30)\" text-anchor=\"middle\">\(escape(xLabel))</text>\n"
        s += "<text x=\"\(x - 44)\" y=\"\(y + h / 2)\" text-anchor=\"middle\" transform=\"rotate(-90 \(x - 44) \(y + h / 2))\">\(escape(yLabel))</text>\n"
        for (i, ser) in series.enumerated() {
            let c = colors[i % colors.count]
            let pts = ser.points.filter { $0.0.isFinite && $0.1.isFinite }
            if line {
                let path = pts.map { "\(r(px($0.0))),\(r(py(min($0.1, ymax))))" }.joined(separator: " ")
                s += "<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"1.5\" points=\"\(path)\"/>\n"
            } else {
                for p in pts { s += "<circle cx=\"\(r(px(p.0)))\" cy=\"\(r(py(min(p.1, ymax))))\" r=\"1.6\" fill=\"\(c)\"/>\n" }
            }
            s += "<text x=\"\(x + w - 6)\" y=\"\(y + 16 + Double(i) * 14)\" text-anchor=\"end\" fill=\"\(c)\">\(escape(ser.name))</text>\n"
        }
        return s + "</g>\n"
    }

    /// 1, 2, 5 × 10^k at or above v.
    static func nice(_ v: Double) -> Double {
        var m = 1e-9
        while m < v {
            if m * 2 >= v { return m * 2 }
            if m * 5 >= v { return m * 5 }
            m *= 10
        }
        return m
    }

    static func r(_ v: Double) -> String {
        let x = (v * 10).rounded() / 10
        return x == x.rounded() ? String(Int(x)) : String(x)
    }

    static func label(_ v: Double) -> String {
        if v == 0 { return "0" }
        if v >= 100 { return String(Int(v.rounded())) }
        if v >= 1 { return r(v) }
        return String((v * 1000).rounded() / 1000)
    }

    static func escape(_ s: String) -> String {
        var o = ""
        for c in s {
            switch c {
            case "&": o += "&amp;"
            case "<": o += "&lt;"
            case ">": o += "&gt;"
            case "\"": o += "&quot;"
            default: o.append(c)
            }
        }
        return o
    }
}
