import Foundation
import NN
import Rewards
import StableDiffusion
import Torch

@testable import TextCraftor

/// The repository root (this file is Tests/TextCraftorTests/Support.swift).
let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let tinySD15 = repository.appendingPathComponent("Tests/StableDiffusionTests/Fixtures/sd/tiny-sd15")
let tinyRewards = repository.appendingPathComponent("Tests/RewardsTests/Fixtures/hf")

/// The tiny SD1.5 pipeline with a trainable copy of its text encoder, the frozen original, and the reward of the
/// parity fixture: aesthetic (gamma 1, scale 3) + CLIP score (gamma 0.5, scale 100) on a tiny CLIP.
func tinySetup() throws -> (StableDiffusionPipeline, CLIPTextModel, CLIPTextModel, WeightedReward) {
    let pipeline = try StableDiffusionPipeline.load(folder: tinySD15)
    let folder = tinySD15.appendingPathComponent("text_encoder")
    let original = try CLIPTextModel.load(
        try Weights.open(folder.appendingPathComponent("model.safetensors")), configFile: folder.appendingPathComponent("config.json"))
    let trainable = pipeline.textEncoder
    trainable.setTrainable(true)
    let clip = try CLIPModel.load(folder: tinyRewards.appendingPathComponent("clip"))
    let rewards = WeightedReward()
    rewards.add(try AestheticReward(embedder: clip, weights: tinyRewards.appendingPathComponent("aesthetic.pth")), gamma: 1)
    rewards.add(CLIPScoreReward(model: clip), gamma: 0.5)
    return (pipeline, trainable, original, rewards)
}

let fixturePrompts = ["a red circle on a blue background", "two small squares, photo"]

/// The gradients now in the parameters (zeros where there is none), by name.
func gradients(_ model: CLIPTextModel) -> [String: Tensor] {
    Dictionary(uniqueKeysWithValues: model.namedParameters.map { ($0.name, ($0.tensor.grad ?? $0.tensor.zerosLike()).clone()) })
}

/// ‖a − b‖ / ‖b‖ over every tensor of two same-keyed gradient sets.
func relativeError(_ a: [String: Tensor], _ b: [String: Tensor]) -> Double {
    var difference = 0.0, norm = 0.0
    for (name, expected) in b {
        difference += (a[name]! - expected).square().sum().item()
        norm += expected.square().sum().item()
    }
    return (difference / norm).squareRoot()
}
