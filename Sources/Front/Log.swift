import Glibc

/// Log severity (`--log-level`): a message is written when its level is at or above the configured one.
public enum LogLevel: Int, Sendable, Comparable, CaseIterable {
    case error = 0, warn = 1, info = 2, debug = 3

    public init?(name: String) {
        switch name {
        case "error": self = .error
        case "warn", "warning": self = .warn
        case "info": self = .info
        case "debug": self = .debug
        default: return nil
        }
    }

    public var name: String { ["error", "warn", "info", "debug"][rawValue] }

    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }

    /// A logger writing "prefix: [level] message" lines to stderr for levels up to `threshold`.
    public static func stderrLogger(prefix: String, threshold: LogLevel) -> @Sendable (LogLevel, String) -> Void {
        { level, msg in
            guard level <= threshold else { return }
            var line = prefix + ": " + (level == .info ? "" : "[\(level.name)] ") + msg + "\n"
            line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        }
    }
}
