import CSwitchyardSys
import Glibc

/// How a child process ended.
public enum ExitStatus: Equatable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    init(waitStatus s: Int32) {
        // WIFEXITED / WEXITSTATUS / WTERMSIG are macros; these are their Linux definitions.
        if s & 0x7f == 0 { self = .exited((s >> 8) & 0xff) } else { self = .signaled(s & 0x7f) }
    }

    public var description: String {
        switch self {
        case .exited(let code): "exited with status \(code)"
        case .signaled(let sig): "killed by signal \(sig)"
        }
    }
}

/// A descriptor the child inherits: `source` (a descriptor of ours) appears in the child as `target`.
public struct InheritedDescriptor: Sendable {
    public let source: Int32
    public let target: Int32
    public init(_ source: Int32, as target: Int32) {
        self.source = source
        self.target = target
    }
}

/// A spawned child process, with a pidfd for race-free liveness checks and signals. If it has not been
/// waited for when this owner is dropped, it is SIGKILLed and reaped (no zombies, no strays).
public struct ChildProcess: ~Copyable, Sendable {
    public let pid: pid_t
    public let pidfd: PidFD
    private var reaped = false

    /// Starts `path` with `arguments` (argv[0] is `path`) and `environment` (nil: ours). Every descriptor
    /// in `inherit` is available in the child under its `target` number (FD_CLOEXEC cleared there only);
    /// all other descriptors Switchyard opens are close-on-exec, and stdin/stdout/stderr are shared.
    public static func spawn(
        path: String, arguments: [String], environment: [String]? = nil, inherit: [InheritedDescriptor] = []
    ) throws(SysError) -> ChildProcess {
        let targets = inherit.map(\.target)
        guard Set(targets).count == targets.count, targets.allSatisfy({ $0 >= 0 }) else {
            throw SysError(errno: EINVAL, call: "spawn (duplicate or negative target descriptor)")
        }
        // Copy every source above the highest target first, so that dup2(source, target) for one entry
        // can never overwrite another entry's source, and source != target (dup2 then clears FD_CLOEXEC).
        let floor = (targets.max() ?? 2) + 1
        var temps: [Int32] = []
        defer { for t in temps { _ = Glibc.close(t) } }
        for entry in inherit {
            temps.append(try retryOnEINTR("fcntl(F_DUPFD_CLOEXEC)") { sy_fd_dup_min(entry.source, floor) })
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (temp, entry) in zip(temps, inherit) {
            let rc = posix_spawn_file_actions_adddup2(&actions, temp, entry.target)
            if rc != 0 { throw SysError(errno: rc, call: "posix_spawn_file_actions_adddup2") }
        }

        // The child starts with no blocked signals and every signal at its default action, whatever this
        // process (a test runner, a server that ignores SIGPIPE) has set.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        var allSignals = sigset_t()
        sigemptyset(&noSignals)
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = [path] + arguments
        let env = environment ?? currentEnvironment()
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        var cEnv: [UnsafeMutablePointer<CChar>?] = env.map { strdup($0) } + [nil]
        defer {
            for p in cArgs { free(p) }
            for p in cEnv { free(p) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attributes, &cArgs, &cEnv)
        if rc != 0 { throw SysError(errno: rc, call: "posix_spawn(\(path))") }
        do {
            let pidfd = try PidFD(pid: pid)
            return ChildProcess(pid: pid, pidfd: pidfd)
        } catch {
            _ = kill(pid, SIGKILL)
            var status: Int32 = 0
            _ = try? retryOnEINTR("waitpid") { waitpid(pid, &status, 0) }
            throw error
        }
    }

    private init(pid: pid_t, pidfd: consuming PidFD) {
        self.pid = pid
        self.pidfd = pidfd
    }

    /// Sends `signal` through the pidfd.
    public func send(signal: Int32) throws(SysError) {
        try pidfd.send(signal: signal)
    }

    /// Blocks until the child exits and reaps it.
    public mutating func wait() throws(SysError) -> ExitStatus {
        var status: Int32 = 0
        _ = try retryOnEINTR("waitpid") { waitpid(pid, &status, 0) }
        reaped = true
        return ExitStatus(waitStatus: status)
    }

    /// Waits up to `timeoutMs` for the child to exit; reaps it and returns its status, or nil if it is
    /// still running.
    public mutating func wait(timeoutMs: Int32) throws(SysError) -> ExitStatus? {
        guard try pidfd.waitForExit(timeoutMs: timeoutMs) else { return nil }
        return try wait()
    }

    deinit {
        if !reaped {
            _ = sy_pidfd_send_signal(pidfd.fd.rawValue, SIGKILL)
            var status: Int32 = 0
            _ = try? retryOnEINTR("waitpid") { waitpid(pid, &status, 0) }
        }
    }
}

/// This process's environment as "KEY=VALUE" strings.
public func currentEnvironment() -> [String] {
    var result: [String] = []
    var p = environ
    while let entry = p.pointee {
        result.append(String(cString: entry))
        p += 1
    }
    return result
}

/// Path of the running executable (/proc/self/exe).
public func currentExecutablePath() throws(SysError) -> String {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let n = try retryOnEINTR("readlink(/proc/self/exe)") { readlink("/proc/self/exe", &buffer, Int(PATH_MAX)) }
    return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
