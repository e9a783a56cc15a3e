import Torch

/// What a prompt states about a scene: any subset of the five attributes (nil: not stated).
public struct PromptAttributes: Hashable, Sendable, Codable, CustomStringConvertible {
    public var shape: Shape?
    public var colour: NamedColour?
    public var size: Size?
    public var position: Position?
    public var background: NamedColour?

    public init(shape: Shape? = nil, colour: NamedColour? = nil, size: Size? = nil, position: Position? = nil,
                background: NamedColour? = nil) {
        self.shape = shape
        self.colour = colour
        self.size = size
        self.position = position
        self.background = background
    }

    /// How many attributes are stated (0...5).
    public var count: Int {
        [shape != nil, colour != nil, size != nil, position != nil, background != nil].filter { $0 }.count
    }

    /// How many of the stated attributes `other` has the same value for (a nil in `other` never matches).
    public func matches(_ other: PromptAttributes) -> Int {
        var n = 0
        if let shape, shape == other.shape { n += 1 }
        if let colour, colour == other.colour { n += 1 }
        if let size, size == other.size { n += 1 }
        if let position, position == other.position { n += 1 }
        if let background, background == other.background { n += 1 }
        return n
    }

    public var description: String {
        [shape?.rawValue, colour.map { "colour=\($0.rawValue)" }, size?.rawValue, position?.rawValue,
         background.map { "background=\($0.rawValue)" }].compactMap { $0 }.joined(separator: " ")
    }
}

/// The caption grammar. A caption is one of `templateCount` templates filled with words for the stated attributes;
/// a missing shape is "shape", other missing attributes drop their phrase. Word choices (synonyms) and the template
/// come from a seed. Every caption of the grammar parses back to exactly the attributes it was made from.
///
///   0  a large red circle on the left, on a blue background
///   1  a small green square at the top over a white background
///   2  red circle, large, left side, blue background
///   3  a blue background with a big red circle on the left
///   4  a tiny red circle in the middle against a blue backdrop
///   5  there is a large red circle on the right; the background is blue
public enum Captions {
    public static let templateCount = 6

    static let shapeWords: [String: Shape] = ["circle": .circle, "disc": .circle, "square": .square, "triangle": .triangle]
    static let sizeWords: [String: Size] = ["small": .small, "tiny": .small, "little": .small, "large": .large, "big": .large]
    static let positionWords: [String: Position] = [
        "left": .left, "right": .right, "top": .top, "bottom": .bottom, "centre": .centre, "center": .centre, "middle": .centre,
    ]
    static let backgroundWords: Set<String> = ["background", "backdrop"]

    /// A caption for the scene, template and words chosen by `seed`.
    public static func caption(for scene: Scene, seed: UInt64) -> String {
        var rng = SplitMix64(seed: seed)
        return caption(scene.attributes, template: rng.below(templateCount), variant: rng.next())
    }

    /// The caption of `attributes` in `template` (0..<templateCount); `variant`'s bits choose synonyms.
    public static func caption(_ a: PromptAttributes, template: Int, variant: UInt64 = 0) -> String {
        precondition((0..<templateCount).contains(template), "Captions: no template \(template)")
        func pick(_ words: [String], _ bit: Int) -> String { words[Int((variant >> UInt64(bit * 2)) % UInt64(words.count))] }
        let size = a.size.map { $0 == .small ? pick(["small", "tiny", "small"], 0) : pick(["large", "big", "large"], 0) }
        let shape = a.shape.map { $0 == .circle ? pick(["circle", "disc", "circle"], 1) : $0.rawValue } ?? "shape"
        let noun = (["a"] + [size, a.colour?.rawValue, shape].compactMap { $0 }).joined(separator: " ")
        let place: String? = a.position.map {
            switch $0 {
            case .left: return "on the left"
            case .right: return "on the right"
            case .top: return "at the top"
            case .bottom: return "at the bottom"
            case .centre: return "in the " + pick(["centre", "middle", "center"], 2)
            }
        }
        let phrase = ([noun] + [place].compactMap { $0 }).joined(separator: " ")
        let bg = a.background?.rawValue
        switch template {
        case 0: return phrase + (bg.map { ", on a \($0) background" } ?? "")
        case 1: return phrase + (bg.map { " over a \($0) background" } ?? "")
        case 2:
            let head = [a.colour?.rawValue, a.shape.map { _ in shape }].compactMap { $0 }.joined(separator: " ")
            let side: String? = a.position.map {
                switch $0 {
                case .left: return "left side"
                case .right: return "right side"
                case .top: return "top"
                case .bottom: return "bottom"
                case .centre: return pick(["centre", "middle", "center"], 2)
                }
            }
            let parts = [head.isEmpty ? "shape" : head, size, side, bg.map { "\($0) background" }].compactMap { $0 }
            return parts.joined(separator: ", ")
        case 3: return bg.map { "a \($0) background with " + phrase } ?? phrase
        case 4: return phrase + (bg.map { " against a \($0) backdrop" } ?? "")
        default: return "there is " + phrase + (bg.map { "; the background is \($0)" } ?? "")
        }
    }

    /// What a caption states. Words are matched case-insensitively: shape words (circle, disc, square, triangle), size
    /// words (small, tiny, little, large, big), position words (left, right, top, bottom, centre, center, middle) and
    /// colour names; a colour name followed by "background"/"backdrop", or following "background is", is the
    /// background, any other is the shape's colour. The first mention of each attribute wins.
    public static func parse(_ caption: String) -> PromptAttributes {
        let words = caption.lowercased().split { !$0.isLetter }.map(String.init)
        var a = PromptAttributes()
        for (i, word) in words.enumerated() {
            if let shape = shapeWords[word] { a.shape = a.shape ?? shape }
            if let size = sizeWords[word] { a.size = a.size ?? size }
            if let position = positionWords[word] { a.position = a.position ?? position }
            if let colour = NamedColour(rawValue: word) {
                let before = i >= 2 && backgroundWords.contains(words[i - 2]) && words[i - 1] == "is"
                let after = i + 1 < words.count && backgroundWords.contains(words[i + 1])
                if before || after { a.background = a.background ?? colour } else { a.colour = a.colour ?? colour }
            }
        }
        return a
    }
}
