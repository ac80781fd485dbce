"""Random container names in Docker's adjective_surname style (our own word lists)."""

import random

ADJECTIVES = (
    "amazing", "bold", "brave", "busy", "calm", "clever", "cool", "crisp", "curious", "daring",
    "eager", "elegant", "epic", "fervent", "festive", "focused", "friendly", "gallant", "gentle",
    "happy", "hardcore", "hopeful", "jolly", "keen", "kind", "lucid", "merry", "modest", "nifty",
    "noble", "patient", "peaceful", "pensive", "quirky", "relaxed", "serene", "sharp", "silly",
    "sleepy", "stoic", "sweet", "tender", "trusting", "upbeat", "vibrant", "wizardly", "zealous",
)
SURNAMES = (
    "babbage", "banach", "bardeen", "bohr", "boole", "cantor", "cerf", "curie", "darwin",
    "dijkstra", "euler", "faraday", "fermat", "feynman", "galois", "gauss", "goldberg", "hamilton",
    "hopper", "hypatia", "jackson", "johnson", "kepler", "knuth", "lamport", "leavitt", "liskov",
    "lovelace", "maxwell", "meitner", "mirzakhani", "newton", "noether", "pascal", "ramanujan",
    "ritchie", "shannon", "sinoussi", "thompson", "torvalds", "turing", "volta", "wiles", "wing",
)


def random_name(taken, rng=random):
    """A name not in `taken` (a container of names without the leading slash)."""
    for attempt in range(100):
        name = "%s_%s" % (rng.choice(ADJECTIVES), rng.choice(SURNAMES))
        if attempt > 10:
            name += str(rng.randint(0, 99))
        if name not in taken:
            return name
    return "container_%08x" % rng.getrandbits(32)
