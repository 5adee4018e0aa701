// swift-tools-version: 6.0
// Switchyard: a shared-memory, multi-process LLM inference server for Linux.
// Dependencies point down: CSwitchyardSys -> SysKit -> {ShmRing, Engine} -> {Worker, Front} -> executables.
import PackageDescription

let fastPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"])]

let package = Package(
    name: "Switchyard",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "switchyard", targets: ["switchyard"]),
        .executable(name: "switchyard-client", targets: ["switchyard-client"]),
        .executable(name: "switchyard-bench", targets: ["switchyard-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // C shim: only what Swift cannot call directly (liburing inline helpers, futex, memfd, pidfd,
        // CPU_SET, libnuma, C11 atomics on shared memory).
        .target(
            name: "CSwitchyardSys",
            linkerSettings: [.linkedLibrary("uring"), .linkedLibrary("numa")]
        ),
        // Hot numeric kernels (quantized dot products, matmul tiles) with run-time CPU dispatch.
        .target(
            name: "CSwitchyardKernels",
            cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])]
        ),
        .target(name: "SysKit", dependencies: ["CSwitchyardSys"]),
        // The request path (ring, wire, front) runs without the dynamic exclusivity checks: they showed up
        // as swift_beginAccess / AccessSet::insert in the front's per-request profile. The static checks
        // stay on.
        .target(name: "ShmRing", dependencies: ["SysKit", "CSwitchyardSys"], swiftSettings: fastPath),
        .target(name: "Wire", swiftSettings: fastPath),
        .target(name: "Routing", swiftSettings: fastPath),
        .target(name: "JSONSchema", swiftSettings: fastPath),
        .target(name: "Engine", dependencies: ["JSONSchema", "SysKit", "CSwitchyardSys", "CSwitchyardKernels"]),
        .target(name: "Worker", dependencies: ["Engine", "JSONSchema", "ShmRing", "Wire", "SysKit", "CSwitchyardSys"], swiftSettings: fastPath),
        .target(name: "Front", dependencies: ["ShmRing", "Wire", "Routing", "JSONSchema", "SysKit", "CSwitchyardSys"], swiftSettings: fastPath),
        // HTTP/1.1 + SSE client over Unix sockets or TCP: used by the client CLI, the bench and the tests.
        .target(name: "ClientKit", dependencies: ["SysKit"]),
        // Pure parts of `switchyard-bench serve`: statistics (HdrHistogram summaries), metric definitions,
        // seeded workload generator, SVG plots, and the runner on ClientKit. Used by the bench and its tests.
        .target(
            name: "BenchKit",
            dependencies: ["ClientKit", .product(name: "Histogram", package: "hdrhistogram-swift")]
        ),
        .executableTarget(
            name: "switchyard",
            dependencies: [
                "Front", "Worker", "Engine", "ShmRing", "SysKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/switchyard"
        ),
        .executableTarget(
            name: "switchyard-client",
            dependencies: ["ClientKit", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "tools/switchyard-client"
        ),
        .executableTarget(
            name: "switchyard-bench",
            dependencies: [
                "ShmRing", "SysKit", "Routing", "Engine", "Worker", "ClientKit", "Wire", "BenchKit", "Front", "CSwitchyardKernels",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "bench",
            exclude: ["floor"]   // bench/floor: a C latency-floor probe built by its own script
        ),
        .testTarget(name: "SysKitTests", dependencies: ["SysKit"]),
        .testTarget(name: "ShmRingTests", dependencies: ["ShmRing", "SysKit"]),
        .testTarget(name: "WireTests", dependencies: ["Wire"]),
        .testTarget(name: "RoutingTests", dependencies: ["Routing"]),
        // Paths the model-reading test targets share (package root, model file, fixtures).
        .target(name: "SwitchyardTestSupport", path: "Tests/Support"),
        .testTarget(name: "EngineTests", dependencies: ["Engine", "JSONSchema", "SwitchyardTestSupport"]),
        .testTarget(name: "WorkerTests", dependencies: ["Worker", "Engine", "SwitchyardTestSupport"]),
        .testTarget(name: "FrontTests", dependencies: ["Front", "Routing", "Wire", "JSONSchema"]),
        .testTarget(name: "EndToEndTests", dependencies: ["ClientKit", "SwitchyardTestSupport", "SysKit"]),
        .testTarget(name: "BenchStatsTests", dependencies: ["BenchKit", "ClientKit"]),
    ]
)
