import Foundation
import NN
import Rewards
import StableDiffusion
import Torch

/// What a checkpoint holds besides the weights and the optimizer: enough to continue exactly.
public struct TrainingState: Codable, Equatable, Sendable {
    public var step: Int
    /// Where the prompt order stands (the sampler's own cursor, encoded).
    public var promptCursor: Data
    public var seed: UInt64
    public var version = 1
    /// fp16 training's loss scale (nil otherwise).
    public var lossScaler: LossScaler?
    /// `early_stop`: the best held-out value, its step and the patience used (nil otherwise).
    public var earlyStopping: EarlyStopping?
    /// normalize_rewards running: each reward's running moments (nil otherwise).
    public var rewardMoments: [String: RunningMoments]?

    public init(step: Int, promptCursor: Data, seed: UInt64) {
        self.step = step
        self.promptCursor = promptCursor
        self.seed = seed
    }
}

/// A training run's folder (LoRA runs: `OUT/lora.safetensors` and `lora.safetensors` in each checkpoint, in place of
/// the component folders; `RunAdapter`): one folder per trained component, as diffusers lays it out (`OUT/text_encoder/`,
/// SDXL's `OUT/text_encoder_2/` too when both encoders train, or `OUT/unet/`: the latest weights, loadable by
/// diffusers), `OUT/metrics.jsonl`, and `OUT/checkpoints/step-NNNNNNNN/` each holding those folders, `optimizer.safetensors`
/// (one AdamW over all their parameters), `generator.safetensors` and `state.json`. Every folder is written under a temporary name, its files fsynced, then
/// renamed, so a crash (or SIGKILL) leaves either the previous checkpoint or the new one, never half of one.
public struct RunFolder: Sendable {
    public let url: URL
    public var checkpoints: URL { url.appendingPathComponent("checkpoints") }
    public var metrics: URL { url.appendingPathComponent("metrics.jsonl") }
    /// TensorBoard's event files (`tensorboard --logdir OUT`).
    public var tensorBoard: URL { url.appendingPathComponent("tensorboard") }
    public var textEncoder: URL { url.appendingPathComponent("text_encoder") }
    public var textEncoder2: URL { url.appendingPathComponent("text_encoder_2") }

    public init(_ url: URL) { self.url = url }

    /// A trained component as diffusers lays it out: its folder name, weights file and config (copied from the model
    /// folder, so diffusers and transformers load the folder unchanged).
    public struct Component: Sendable {
        public let name: String
        public let weights: String
        public let config: URL

        public init(name: String, weights: String, config: URL) {
            self.name = name
            self.weights = weights
            self.config = config
        }
    }

    /// A module being trained and the component it is written as.
    public typealias Trained = (component: Component, module: any Module)

    /// Creates the folder, failing early (before any training) when it cannot be written.
    public func prepare() throws {
        do {
            try FileManager.default.createDirectory(at: checkpoints, withIntermediateDirectories: true)
            let probe = url.appendingPathComponent(".write-test-\(ProcessInfo.processInfo.processIdentifier)")
            try Data().write(to: probe)
            try FileManager.default.removeItem(at: probe)
        } catch {
            throw TextCraftorError.invalidSetting(key: "out", message: "\(url.path): cannot write there (\(error.localizedDescription))")
        }
    }

    /// Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored).
    public func completeCheckpoints() -> [URL] {
        let items = (try? FileManager.default.contentsOfDirectory(at: checkpoints, includingPropertiesForKeys: nil)) ?? []
        return items.filter { $0.lastPathComponent.hasPrefix("step-") && FileManager.default.fileExists(atPath: $0.appendingPathComponent("state.json").path) }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
    }

    /// Writes a checkpoint and refreshes each trained component's folder (`OUT/text_encoder/`, ...), then keeps only
    /// the newest `keep` checkpoints.
    public func save(
        _ trained: [Trained], adapters: [any RunAdapter] = [], optimizer: AdamW, generator: Generator, state: TrainingState,
        keep: Int
    ) throws {
        let name = String(format: "step-%08d", state.step)
        let final = checkpoints.appendingPathComponent(name)
        let temporary = checkpoints.appendingPathComponent(".tmp-\(name)")
        try? FileManager.default.removeItem(at: temporary)
        try FileManager.default.createDirectory(at: temporary, withIntermediateDirectories: true)
        for (component, model) in trained { try writeModel(model, component, to: temporary.appendingPathComponent(component.name)) }
        for adapter in adapters { try adapter.saveCheckpoint(in: temporary) }
        try optimizer.save(to: temporary.appendingPathComponent("optimizer.safetensors"))
        try Tensor.save(["state": generator.state], to: temporary.appendingPathComponent("generator.safetensors"))
        try writeSynced(try JSONEncoder().encode(state), to: temporary.appendingPathComponent("state.json"))
        try? FileManager.default.removeItem(at: final)
        try FileManager.default.moveItem(at: temporary, to: final)
        for (component, model) in trained {
            try replaceFolder(url.appendingPathComponent(component.name)) { try writeModel(model, component, to: $0) }
        }
        for adapter in adapters { try adapter.export(to: url.appendingPathComponent(adapter.fileName)) }
        for old in completeCheckpoints().dropLast(max(keep, 1)) { try? FileManager.default.removeItem(at: old) }
    }

    /// The newest complete checkpoint, for `--resume`.
    public func latestCheckpoint() throws -> URL {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder), isFolder.boolValue else {
            throw TextCraftorError.invalidCheckpoint(folder: url.path, message: "no such folder")
        }
        guard let latest = completeCheckpoints().last else {
            throw TextCraftorError.invalidCheckpoint(
                folder: url.path, message: "not a training run: no complete checkpoint in checkpoints/")
        }
        return latest
    }

    /// Restores the weights of every trained component, the optimizer and the generator from a checkpoint folder;
    /// returns its state.
    public func restore(
        _ checkpoint: URL, _ trained: [Trained], adapters: [any RunAdapter] = [], optimizer: AdamW, generator: Generator
    ) throws -> TrainingState {
        do {
            let stateData = try Data(contentsOf: checkpoint.appendingPathComponent("state.json"))
            let state = try JSONDecoder().decode(TrainingState.self, from: stateData)
            for (component, model) in trained {
                try model.load(try Weights.open(checkpoint.appendingPathComponent("\(component.name)/\(component.weights)")))
            }
            for adapter in adapters { try adapter.restoreCheckpoint(from: checkpoint) }
            try optimizer.load(from: checkpoint.appendingPathComponent("optimizer.safetensors"))
            let saved = try Tensor.load(safetensors: checkpoint.appendingPathComponent("generator.safetensors"))
            guard let generatorState = saved["state"] else {
                throw TextCraftorError.invalidCheckpoint(folder: checkpoint.path, message: "generator.safetensors has no 'state'")
            }
            try generator.restore(state: generatorState)
            return state
        } catch let error as TextCraftorError {
            throw error
        } catch {
            throw TextCraftorError.invalidCheckpoint(folder: checkpoint.path, message: "\(error)")
        }
    }

    /// `config.json` + the weights (keys as the checkpoint had them, `format: pt` as transformers expects).
    func writeModel(_ model: any Module, _ component: Component, to folder: URL) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        if let own = model as? any WritesOwnFolder { return try own.write(to: folder) }
        try model.save(to: folder.appendingPathComponent(component.weights), metadata: ["format": "pt"])
        try writeSynced(try Data(contentsOf: component.config), to: folder.appendingPathComponent("config.json"))
    }

    /// Builds a folder's new contents beside it, then swaps it in.
    func replaceFolder(_ folder: URL, _ fill: (URL) throws -> Void) throws {
        let fresh = folder.deletingLastPathComponent().appendingPathComponent(".new-\(folder.lastPathComponent)")
        let old = folder.deletingLastPathComponent().appendingPathComponent(".old-\(folder.lastPathComponent)")
        try? FileManager.default.removeItem(at: fresh)
        try fill(fresh)
        try? FileManager.default.removeItem(at: old)
        if FileManager.default.fileExists(atPath: folder.path) { try FileManager.default.moveItem(at: folder, to: old) }
        try FileManager.default.moveItem(at: fresh, to: folder)
        try? FileManager.default.removeItem(at: old)
    }
}

/// Writes a file under a temporary name, fsyncs it, then renames it into place.
func writeSynced(_ data: Data, to url: URL) throws {
    let temporary = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp")
    _ = FileManager.default.createFile(atPath: temporary.path, contents: nil)
    let handle = try FileHandle(forWritingTo: temporary)
    try handle.write(contentsOf: data)
    try handle.synchronize()
    try handle.close()
    guard rename(temporary.path, url.path) == 0 else {
        throw TextCraftorError.invalidArgument("cannot write \(url.path): \(String(cString: strerror(errno)))")
    }
}
