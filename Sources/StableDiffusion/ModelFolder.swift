import Foundation
import NN

/// The weights of one component folder of a diffusers model (`unet/`, `vae/`, `text_encoder/`), found the way
/// diffusers and transformers name them. Tried in order:
/// `<base>.<variant>.safetensors`, `<base>.safetensors`, `<binBase>.<variant>.bin`, `<binBase>.bin`
/// (`variant` is e.g. `fp16`; without one, the variant names are skipped). diffusers uses one base for both formats
/// (`diffusion_pytorch_model`); transformers uses `model` for safetensors and `pytorch_model` for `.bin`.
public func componentWeights(
    in folder: URL, baseName: String, binBaseName: String? = nil, variant: String? = nil
) throws -> any WeightSource {
    var isFolder: ObjCBool = false
    guard FileManager.default.fileExists(atPath: folder.path, isDirectory: &isFolder), isFolder.boolValue else {
        throw StableDiffusionError.missingFile(folder.path)
    }
    let binBase = binBaseName ?? baseName
    var names: [String] = []
    if let variant { names.append("\(baseName).\(variant).safetensors") }
    names.append("\(baseName).safetensors")
    if let variant { names.append("\(binBase).\(variant).bin") }
    names.append("\(binBase).bin")
    guard let found = names.map(folder.appendingPathComponent).first(where: { FileManager.default.fileExists(atPath: $0.path) })
    else {
        throw StableDiffusionError.missingWeights(folder: folder.path, lookedFor: names)
    }
    return try Weights.open(found)
}
