// swift-tools-version:6.2
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "tenure",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tenure", targets: ["tenure"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // System libraries: the only importers are TenurePQ, TenureZstd and TenureZlib.
        .systemLibrary(name: "CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),

        // Pure: ids, names, durations, lifecycle, sweep planning, errors, digests (swift-crypto). No I/O.
        .target(name: "TenureCore", dependencies: [.product(name: "Crypto", package: "swift-crypto")], swiftSettings: strict),
        // Thin synchronous wrappers over the C libraries.
        .target(name: "TenurePQ", dependencies: ["CLibPQ", "TenureCore"], swiftSettings: strict),
        .target(name: "TenureZstd", dependencies: ["CZstd", "TenureCore"], swiftSettings: strict),
        .target(name: "TenureZlib", dependencies: ["CZlib", "TenureCore"], swiftSettings: strict),
        // The data path: archive format, backup, restore, verify, SQL export.
        .target(name: "TenureEngine", dependencies: ["TenureCore", "TenurePQ", "TenureZstd", "TenureZlib"], swiftSettings: strict),
        // The private PostgreSQL cluster Tenure starts itself (also used by the tests).
        .target(name: "TenureEmbedded", dependencies: ["TenureCore", "TenurePQ"], swiftSettings: strict),
        // Catalog store and migrations embedded from sql/catalog.
        .target(name: "TenureCatalog", dependencies: ["TenureCore", "TenurePQ"], swiftSettings: strict),
        // The control plane: the use cases the CLI and the HTTP API call the same way, the pool
        // that runs them, durable jobs, the sweep, recovery.
        .target(
            name: "TenureControl",
            dependencies: [
                "TenureCore", "TenurePQ", "TenureCatalog", "TenureEmbedded", "TenureEngine",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        // The HTTP API: Hummingbird routes, auth, problem+json, jobs, metrics. No logic in handlers.
        .target(
            name: "TenureServer",
            dependencies: [
                // The control plane and plain values only (a tidy test checks the imports).
                "TenureCore", "TenureControl",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOPosix", package: "swift-nio"),
                // The parts of the HTTP channel the malformed-request answer works on.
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            // The OpenAPI document served at /openapi.json (docs/openapi.json links to it).
            resources: [.copy("Resources/openapi.json")],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "tenure",
            dependencies: [
                "TenureCore", "TenureControl", "TenureCatalog", "TenureEmbedded", "TenureEngine", "TenurePQ", "TenureServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),

        // Starts the real PostgreSQL server the integration tests use; runs the tenure binary.
        .target(
            name: "TenureTestSupport", dependencies: ["TenureCore", "TenurePQ", "TenureEmbedded"], path: "Tests/TenureTestSupport",
            swiftSettings: strict),
        .testTarget(name: "TenureCoreTests", dependencies: ["TenureCore"]),
        .testTarget(name: "TenureZstdTests", dependencies: ["TenureZstd"]),
        .testTarget(name: "TenureEngineTests", dependencies: ["TenureCore", "TenurePQ", "TenureEngine", "TenureZstd", "TenureTestSupport", "tenure"]),
        .testTarget(
            name: "TenureIntegrationTests",
            dependencies: ["TenureCore", "TenurePQ", "TenureCatalog", "TenureControl", "TenureEmbedded", "TenureTestSupport"]
        ),
        .testTarget(
            name: "TenureAPITests",
            dependencies: ["TenureCore", "TenurePQ", "TenureEmbedded", "TenureEngine", "TenureTestSupport", "tenure"]
        ),
        .testTarget(
            name: "TenureEndToEndTests",
            dependencies: ["TenureCore", "TenurePQ", "TenureEmbedded", "TenureTestSupport", "tenure"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
