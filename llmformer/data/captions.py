"""Captions of synthetic scenes, written from the scene graph: a varied caption (templates drawn at
random) and a canonical one (one fixed phrasing), each with the (subject, predicate, object) triples it
states.

Its own module because the captions are tuned against a parser, not against the pictures: the
phrasings were chosen so that runtime.priors.parse (spaCy's small English model) reads them back to the
scene's object names, and the comments record which phrasings failed and why. It sees only names,
attributes, counts and relations, never pixels.

stdlib only (the rng is the scene's numpy Generator, passed in).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:                    # annotations only: captions need no numpy / OpenCV at run time
    from llmformer.data.layout import Group

__all__ = ["plural", "group_relations", "canonical_caption", "varied_caption"]


def plural(name: str) -> str:
    """The plural of a shape or class name, as the captions count them: "cross" -> "crosses"."""
    return name + "es" if name.endswith(("s", "x", "sh", "ch")) else name + "s"


_PHRASES = {          # after a noun, or after "is/are"
    "left of": ["to the left of", "on the left of", "on the left side of"],
    "right of": ["to the right of", "on the right of", "on the right side of"],
    "above": ["above", "over", "floating above", "hovering over"],
    "below": ["below", "under", "beneath", "underneath"],
    "on": ["on", "on top of", "sitting on", "resting on", "standing on"],
    "inside": ["inside", "in", "within", "placed inside", "inside of"],
    "next to": ["next to", "beside", "near", "close to"],
}
# Finite verbs (singular, plural) for the "X sits on Y" frame. Not "hovers", "floats" or "lies": spaCy
# tags them as nouns after a noun ("a pink pentagon hovers over" -> the object "pentagon hover").
_VERBS = {
    "above": [("sits above", "sit above")],
    "below": [("sits below", "sit below")],
    "on": [("sits on", "sit on"), ("rests on", "rest on"), ("stands on", "stand on")],
    "inside": [("sits inside", "sit inside")],
    "next to": [("sits next to", "sit next to"), ("stands beside", "stand beside")],
}
_CANONICAL = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below",
              "on": "on", "inside": "inside", "next to": "next to"}
# Background: after the objects ("... on grass"), as a sentence lead ("On the grass, ..."), as a noun
# ("The background is grass."), and in the canonical caption. Always its class name as the head noun.
_BG_TAIL = {
    "grass": ["on grass", "on the grass", "in the grass", "on green grass"],
    "sand": ["on sand", "on the sand", "on beige sand", "in the sand"],
    "water": ["on water", "on the water", "on blue water", "floating on water"],
    "wall": ["in front of a brick wall", "against a brick wall", "in front of a red brick wall", "against a wall"],
    "floor": ["on a wooden floor", "on the wooden floor", "on a wood floor", "on the floor"],
    "carpet": ["on a carpet", "on the carpet", "on a soft carpet", "on a patterned carpet"],
}
_BG_LEAD = {
    "grass": ["on the grass", "on green grass", "in the grass"],
    "sand": ["on the sand", "in the sand"],
    "water": ["on the water", "on blue water"],
    "wall": ["in front of a brick wall", "against a brick wall"],
    "floor": ["on a wooden floor", "on the wooden floor"],
    "carpet": ["on a carpet", "on the carpet"],
}
_BG_NOUN = {"grass": ["grass", "green grass"], "sand": ["sand", "beige sand"], "water": ["water", "blue water"],
            "wall": ["a brick wall", "a red brick wall"], "floor": ["a wooden floor", "a wood floor"],
            "carpet": ["a carpet", "a soft carpet"]}
_BG_CANONICAL = {"grass": "on grass", "sand": "on sand", "water": "on water", "wall": "in front of a brick wall",
                 "floor": "on a wooden floor", "carpet": "on a carpet"}
_NUMBER = {1: "a", 2: "two", 3: "three"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _noun(g: Group) -> str:
    return plural(g.name) if g.count > 1 else g.name


def _np_canonical(g: Group) -> str:
    # Pattern before color: spaCy reads "red striped circle" as the noun "red" or the one attribute
    # "red striped"; "striped red circle" parses as two attributes.
    words = [g.size] + ([g.pattern] if g.pattern != "plain" else []) + [g.color, _noun(g)]
    det = _article(words[0]) if g.count == 1 else _NUMBER[g.count]
    return " ".join([det] + words)


def _np_varied(g: Group, rng) -> str:
    words = [g.color, _noun(g)]
    if g.pattern != "plain" and rng.random() < 0.85:
        words.insert(0, g.pattern)
    # A count right before a pattern word is lost by spaCy ("two striped red circles" parses as one
    # circle), so counted groups always say their size ("two small striped red circles").
    if g.count > 1 or rng.random() < 0.65:
        words.insert(0, g.size)
    if g.count == 1:
        det = _article(words[0])
    elif g.count == 2 and rng.random() < 0.15:
        det = "a pair of"
    else:
        det = _NUMBER[g.count]
    return " ".join([det] + words)


def group_relations(rels: list[tuple[int, str, int]], groups: list[Group]) -> dict[tuple[int, int], str]:
    """A predicate between two groups when it holds for every pair of their members."""
    of = {}
    for s, p, o in rels:
        of[(s, o)] = p
    out = {}
    for a, ga in enumerate(groups):
        for b, gb in enumerate(groups):
            if a == b:
                continue
            preds = {of.get((s, o)) for s in ga.members for o in gb.members}
            if len(preds) == 1 and None not in preds:
                out[(a, b)] = preds.pop()
    return out


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _be(g: Group, np_: str = "") -> str:
    return "are" if g.count > 1 and not np_.startswith("a pair") else "is"


def canonical_caption(groups: list[Group], grel, bg: str, order: list[int]):
    """One fixed phrasing. Groups left to right, each with all its attributes in one order (size,
    pattern, color). The first sentence names the first two groups and how they relate, and the
    background: "A small red circle to the left of a large blue square, on grass." Each later group gets
    a sentence relating it to the nearest earlier group it has a relation with: "Two small yellow stars
    are above the square." / "The square is inside a large white heart." / "There is also a ...".
    Separate sentences, because spaCy spreads a preposition over a whole comma list of noun phrases."""
    triples = []
    o0 = order[0]
    head, rest = _np_canonical(groups[o0]), order[1:]
    if len(order) >= 2:
        o1 = order[1]
        rest = order[2:]
        if (o0, o1) in grel:
            head = f"{head} {_CANONICAL[grel[(o0, o1)]]} {_np_canonical(groups[o1])}"
            triples.append((groups[o0].name, grel[(o0, o1)], groups[o1].name))
        elif grel.get((o1, o0)) == "inside":
            head = f"{_np_canonical(groups[o1])} inside {_np_canonical(groups[o0])}"
            triples.append((groups[o1].name, "inside", groups[o0].name))
        else:
            head = f"{head} and {_np_canonical(groups[o1])}"
    sentences = [f"{_cap(head)}, {_BG_CANONICAL[bg]}."]
    for gi in rest:
        g = groups[gi]
        earlier = order[:order.index(gi)]
        sentence = f"There {_be(g)} also {_np_canonical(g)}."
        for prev in reversed(earlier):
            ref = f"the {_noun(groups[prev])}"
            if (gi, prev) in grel:
                sentence = f"{_cap(_np_canonical(g))} {_be(g)} {_CANONICAL[grel[(gi, prev)]]} {ref}."
                triples.append((g.name, grel[(gi, prev)], groups[prev].name))
                break
            if grel.get((prev, gi)) == "inside":
                sentence = f"{_cap(ref)} {_be(groups[prev])} inside {_np_canonical(g)}."
                triples.append((groups[prev].name, "inside", g.name))
                break
        sentences.append(sentence)
    return " ".join(sentences), triples


def varied_caption(groups: list[Group], grel, bg: str, rng):
    """Randomly chosen templates: the first two related groups as one phrase or clause, each later group
    as a clause referring back ("..., and a blue square is next to the circle"), the background as a
    tail, a lead or its own sentence."""
    order = [int(i) for i in rng.permutation(len(groups))]
    triples = []
    if len(groups) >= 2 and grel:            # start with a related pair, either way round
        a, b = list(grel)[int(rng.integers(len(grel)))]
        order = [a, b] + [i for i in order if i not in (a, b)]
    first = groups[order[0]]
    np_first = _np_varied(first, rng)
    rest = order[1:]
    if len(groups) >= 2 and (order[0], order[1]) in grel:
        a, b = order[0], order[1]
        pred = grel[(a, b)]
        triples.append((groups[a].name, pred, groups[b].name))
        np_b = _np_varied(groups[b], rng)
        kind = _pick(rng, ["phrase", "phrase", "copula", "there"] + (["verb"] if pred in _VERBS else []))
        if kind == "phrase":
            head = f"{np_first} {_pick(rng, _PHRASES[pred])} {np_b}"
        elif kind == "copula":
            head = f"{np_first} {_be(first, np_first)} {_pick(rng, _PHRASES[pred])} {np_b}"
        elif kind == "there":
            head = f"there {_be(first, np_first)} {np_first} {_pick(rng, _PHRASES[pred])} {np_b}"
        else:
            head = f"{np_first} {_pick(rng, _VERBS[pred])[1 if _be(first, np_first) == 'are' else 0]} {np_b}"
        rest = order[2:]
    elif len(groups) >= 2 and grel.get((order[1], order[0])) == "inside":
        a, b = order[0], order[1]              # a contains b
        triples.append((groups[b].name, "inside", groups[a].name))
        kind = "phrase"
        head = f"{np_first} {_pick(rng, ['containing', 'that contains', 'with'])} {_np_varied(groups[b], rng)}"
        rest = order[2:]
    else:
        kind = _pick(rng, ["phrase", "there"])
        head = np_first if kind == "phrase" else f"there {_be(first, np_first)} {np_first}"
    mentioned = [i for i in order if i not in rest]
    for gi in rest:
        g = groups[gi]
        np_g = _np_varied(g, rng)
        options = [(grel[(gi, m)], m) for m in mentioned if (gi, m) in grel]
        if options:
            pred, m = options[int(rng.integers(len(options)))]
            triples.append((g.name, pred, groups[m].name))
            ref = f"the {_noun(groups[m])}"
            style = _pick(rng, ["and", "sentence", "with"])
            if style == "and":
                head += f", and {np_g} {_be(g, np_g)} {_pick(rng, _PHRASES[pred])} {ref}"
            elif style == "sentence":
                head += ". " + _cap(f"{np_g} {_be(g, np_g)} {_pick(rng, _PHRASES[pred])} {ref}")
            else:
                head += f", with {np_g} {_pick(rng, _PHRASES[pred])} {ref}"
        elif _pick(rng, ["and", "also"]) == "and":
            head += f", and {np_g}"
        else:
            head += f". There {_be(g, np_g)} also {np_g}"
        mentioned.append(gi)
    # "A picture of ..." / "This image shows ..." only wrap a noun phrase, not a clause.
    mode = _pick(rng, ["tail", "tail", "lead", "sentence"] + (["frame"] if kind == "phrase" else []))
    if mode == "lead":
        text = f"{_cap(_pick(rng, _BG_LEAD[bg]))}, {head}."
    elif mode == "sentence":
        text = _cap(head) + ". " + _pick(rng, [f"The background is {_pick(rng, _BG_NOUN[bg])}.",
                                                f"Everything is {_pick(rng, _BG_TAIL[bg])}."])
    elif mode == "frame":
        text = _cap(_pick(rng, ["this image shows ", "the picture shows ", "a picture of "]) + head) \
            + f", {_pick(rng, _BG_TAIL[bg])}."
    else:
        text = _cap(head) + _pick(rng, [", ", " "]) + _pick(rng, _BG_TAIL[bg]) + "."
    return text, triples
