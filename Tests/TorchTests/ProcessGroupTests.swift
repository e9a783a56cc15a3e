import Foundation
import Testing
import Torch

/// The process group's backends, in one process (a group of one): Gloo runs its collectives; the NCCL plugin's
/// loading fails with a message naming what is wrong.
@Suite(.serialized, .enabled(if: ProcessGroup.isAvailable, "built without Gloo's headers (libgloo-dev)"))
struct ProcessGroupTests {
    func group(_ backend: ProcessGroup.Backend) throws -> ProcessGroup {
        let port = try #require(ProcessGroup.freePort())
        return try ProcessGroup(host: "127.0.0.1", port: port, rank: 0, worldSize: 1, timeout: 20, backend: backend)
    }

    func message(_ body: () throws -> Void) -> String {
        do { try body() } catch { return (error as? TorchError)?.message ?? "\(error)" }
        return "no error"
    }

    @Test func aGlooGroupOfOneReducesToItself() throws {
        let g = try group(.gloo)
        #expect(g.backend == .gloo && !g.backend.onCUDA)
        let x = Tensor([1.5, -2, 4] as [Float], shape: [3]), n = Tensor([7] as [Int64], shape: [1])
        try g.allReduce([x], .sum)
        try g.allReduce([n], .max)
        try g.broadcast([x])
        try g.barrier()
        #expect(x.toArray(Float.self) == [1.5, -2, 4] && n.toArray(Int64.self) == [7])
        try g.set("k", "v")
        #expect(try g.value("k") == "v" && g.value("absent") == nil)
    }

    @Test func aMissingNCCLPluginIsNamed() {
        let text = message { _ = try group(.nccl(plugin: "/nonexistent/libtextcraftor_nccl.so")) }
        #expect(text.contains("cannot load the NCCL plugin") && text.contains("/nonexistent/libtextcraftor_nccl.so"), "\(text)")
    }

    @Test func aLibraryThatIsNotThePluginIsNamed() throws {
        // libc10.so loads, but has no textcraftor_nccl_backend.
        let c10 = try #require(Torch.libraryDirectory).appendingPathComponent("libc10.so").path
        let text = message { _ = try group(.nccl(plugin: c10)) }
        #expect(text.contains("has no textcraftor_nccl_backend"), "\(text)")
    }

    /// With the plugin built (scripts/build-nccl-plugin) and named by TEXTCRAFTOR_NCCL_PLUGIN, on a CUDA libtorch:
    /// on a GPU the group forms and reduces a CUDA tensor; without one, ProcessGroupNCCL's refusal comes back as a
    /// one-line error.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["TEXTCRAFTOR_NCCL_PLUGIN"] != nil, "TEXTCRAFTOR_NCCL_PLUGIN not set"))
    func theNCCLPluginFormsAGroupOrSaysWhyNot() throws {
        let plugin = try #require(ProcessGroup.ncclPlugin())
        try Torch.loadCUDA()
        if Torch.cudaDeviceCount > 0 {
            let g = try group(.nccl(plugin: plugin))
            let x = Tensor([1, 2] as [Float], shape: [2]).to(Device.cuda(0))
            try g.allReduce([x], .sum)
            #expect(x.toArray(Float.self) == [1, 2])
        } else {
            let text = message { _ = try group(.nccl(plugin: plugin)) }
            #expect(text.hasPrefix("ProcessGroupNCCL: ") && !text.contains("\n"), "\(text)")
        }
    }
}
