// swift-tools-version:6.1
// TextCraftor for Swift. libtorch is found through pkg-config (`textcraftor-libtorch.pc`, written by
// scripts/bootstrap-libtorch into .build/pkgconfig; the Makefile sets PKG_CONFIG_PATH). See README.md.
import Foundation
import PackageDescription

/// The libtorch lib folder, read from the .pc file the bootstrap wrote, so that the executables and test bundles of
/// this package get an rpath to it. A package that depends on our libraries sets its own rpath (or LD_LIBRARY_PATH).
let libtorchLibDir: String? = {
    let pc = Context.packageDirectory + "/.build/pkgconfig/textcraftor-libtorch.pc"
    guard let text = try? String(contentsOfFile: pc, encoding: .utf8) else { return nil }
    return text.split(separator: "\n").first { $0.hasPrefix("libdir=") }.map { String($0.dropFirst("libdir=".count)) }
}()
let rpath: [LinkerSetting] = libtorchLibDir.map { [.unsafeFlags(["-Xlinker", "-rpath", "-Xlinker", $0])] } ?? []

let package = Package(
    name: "TextCraftor",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "Torch", targets: ["Torch"]),
        .library(name: "NN", targets: ["NN"]),
        .library(name: "StableDiffusion", targets: ["StableDiffusion"]),
        .library(name: "Rewards", targets: ["Rewards"]),
        .library(name: "TextCraftor", targets: ["TextCraftor"]),
        .library(name: "ShapesWorld", targets: ["ShapesWorld"]),
        .executable(name: "textcraftor", targets: ["textcraftor"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/weichsel/ZIPFoundation", from: "0.9.19"),
        // Training config files (TOML). toml++ underneath: typed values, line and column in parse errors.
        .package(url: "https://github.com/LebJe/TOMLKit", exact: "0.6.0"),
    ],
    targets: [
        // libtorch's headers and libraries, as pkg-config describes them.
        .systemLibrary(name: "CLibTorch", pkgConfig: "textcraftor-libtorch"),
        // The C++ shim: a flat C API over ATen and autograd (ctorch.h), nothing else.
        .target(name: "CTorch", dependencies: ["CLibTorch"]),
        .target(
            name: "Torch",
            dependencies: ["CTorch", .product(name: "ZIPFoundation", package: "ZIPFoundation")]
        ),
        .target(name: "NN", dependencies: ["Torch"]),
        // zlib, to read gzip resources (the tokenizer's merges). Named apart from ZIPFoundation's own `CZLib` module,
        // which only exists on Linux.
        .systemLibrary(name: "SystemZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"]), .brew(["zlib"])]),
        .target(
            name: "StableDiffusion", dependencies: ["Torch", "NN", "SystemZlib"], resources: [.copy("Resources")]),
        // PNG and JPEG decoding over the system's libpng and libjpeg(-turbo) (apt: libpng-dev libjpeg62-turbo-dev).
        .target(name: "CImageCodecs", linkerSettings: [.linkedLibrary("png16"), .linkedLibrary("jpeg")]),
        .target(name: "Rewards", dependencies: ["Torch", "NN", "StableDiffusion", "CImageCodecs"]),
        .target(
            name: "TextCraftor",
            dependencies: [
                "Torch", "NN", "StableDiffusion", "Rewards", "ShapesWorld", .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            // Parti-Prompts (Apache-2.0), for `textcraftor eval --parti`.
            resources: [.copy("Resources")]),
        // The embedded default world: procedural 32x32 scenes, captions, a held-out split, a pixel-only oracle.
        .target(name: "ShapesWorld", dependencies: ["Torch", "NN", "StableDiffusion", "Rewards"], resources: [.copy("Resources")]),
        .executableTarget(
            name: "textcraftor",
            dependencies: [
                "Torch", "NN", "StableDiffusion", "Rewards", "TextCraftor", "ShapesWorld",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            linkerSettings: rpath
        ),
        .testTarget(name: "TorchTests", dependencies: ["Torch", "CTorch"], resources: [.copy("Fixtures")], linkerSettings: rpath),
        .testTarget(name: "NNTests", dependencies: ["NN"], resources: [.copy("Fixtures")], linkerSettings: rpath),
        .testTarget(
            name: "TextCraftorTests", dependencies: ["TextCraftor"], resources: [.copy("Fixtures")], linkerSettings: rpath),
        .testTarget(name: "RewardsTests", dependencies: ["Rewards"], resources: [.copy("Fixtures")], linkerSettings: rpath),
        .testTarget(name: "ShapesWorldTests", dependencies: ["ShapesWorld"], linkerSettings: rpath),
        // Runs the built `textcraftor` binary as a user would (it is built because the target depends on it).
        .testTarget(name: "CLITests", dependencies: ["textcraftor", "Torch", "TextCraftor"], linkerSettings: rpath),
        .testTarget(
            name: "StableDiffusionTests", dependencies: ["StableDiffusion"], resources: [.copy("Fixtures")],
            linkerSettings: rpath),
    ],
    cxxLanguageStandard: .cxx17
)
