"""The ImageNet-1k classes that are birds, with readable names (the starter model's labels). A name says no more
than the class holds: ImageNet's "drake" class is labelled "Mallard" (its photos show both sexes)."""

from __future__ import annotations

__all__ = ["IMAGENET_BIRDS", "GROUP_LABELS", "bird_indices", "bird_names"]

# ImageNet class index -> readable name. Indices 7-24, 80-100 and 127-146 are the bird synsets.
IMAGENET_BIRDS: dict[int, str] = {
    7: "Rooster", 8: "Hen", 9: "Common ostrich", 10: "Brambling", 11: "Goldfinch",
    12: "House finch", 13: "Dark-eyed junco", 14: "Indigo bunting", 15: "American robin", 16: "Bulbul",
    17: "Jay", 18: "Magpie", 19: "Chickadee", 20: "American dipper", 21: "Kite", 22: "Bald eagle",
    23: "Vulture", 24: "Great grey owl",
    80: "Black grouse", 81: "Ptarmigan", 82: "Ruffed grouse", 83: "Greater prairie chicken",
    84: "Indian peafowl", 85: "Quail", 86: "Partridge", 87: "Grey parrot", 88: "Macaw",
    89: "Sulphur-crested cockatoo", 90: "Lorikeet", 91: "Coucal", 92: "Bee-eater", 93: "Hornbill",
    94: "Hummingbird", 95: "Jacamar", 96: "Toucan", 97: "Mallard", 98: "Red-breasted merganser",
    99: "Goose", 100: "Black swan",
    127: "White stork", 128: "Black stork", 129: "Spoonbill", 130: "Flamingo", 131: "Little blue heron",
    132: "Great egret", 133: "Bittern", 134: "Crane", 135: "Limpkin", 136: "Purple swamphen",
    137: "American coot", 138: "Bustard", 139: "Ruddy turnstone", 140: "Dunlin", 141: "Common redshank",
    142: "Dowitcher", 143: "Oystercatcher", 144: "Pelican", 145: "King penguin", 146: "Albatross",
}


# Labels that name a group (a family, genus or several species), not one species: the starter cannot tell the
# species inside them apart, and a bird of a related species outside the 59 is often given one of them.
GROUP_LABELS = ("Bulbul", "Jay", "Magpie", "Chickadee", "Kite", "Vulture", "Ptarmigan", "Quail", "Partridge",
                "Macaw", "Lorikeet", "Coucal", "Bee-eater", "Hornbill", "Hummingbird", "Jacamar", "Toucan", "Goose",
                "Flamingo", "Spoonbill", "Bittern", "Crane", "Bustard", "Dowitcher", "Oystercatcher", "Pelican",
                "Albatross", "Goldfinch")


def bird_indices() -> list[int]:
    """ImageNet indices of the bird classes, ascending."""
    return sorted(IMAGENET_BIRDS)


def bird_names() -> list[str]:
    """Readable names in the order of `bird_indices`."""
    return [IMAGENET_BIRDS[i] for i in bird_indices()]
