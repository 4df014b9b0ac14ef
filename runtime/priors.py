"""Caption -> LLM priors: objects, their attributes, and the relations between them.

    parse("A brown dog lying on a couch next to two cats.")
    -> objects   [dog ['brown'] 1, couch 1, cat 2]
       relations [dog -lie on-> couch, dog -lie next to-> cat]

The parser is rule-based over spaCy's dependency parse, in the spirit of the spaCy-based scene-graph
parsers (Schuster et al. 2015; vacancy/SceneGraphParser), re-implemented here for LLaVA-style captions
("The image shows ...", "In the background ..."): objects come from noun phrases, attributes from their
modifiers and from predicative adjectives, relations from prepositions, verbs, passives, relative
clauses and conjunctions. What an object, attribute and relation should be is pinned down by the
hand-annotated corpus in tests/data/ (see its README for the conventions).

The word lists the rules consult are in runtime.lexicon and the spaCy pipeline comes from runtime.nlp;
this module is the rules themselves and the `Priors` they produce.

This module imports only numpy at import time; spaCy is imported on the first parse, so
`import runtime` stays fast and needs neither spaCy nor torch until a caption is parsed.
"""
from __future__ import annotations

import dataclasses
import re
import threading
import unicodedata
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from runtime.lexicon import (ABSTRACT, COLLECTION, COLORS, COPULAS, DEPICT, FRAME, KNOWN_COMPOUNDS, MATERIALS,
                             MEDIA, NON_RELATION_PREPS, NOT_PREP_HEADS, NUMBERS, PARTITIVES, PERSON, PERSONAL,
                             POSITION, POSITION_ONLY_WITH_OF, PREP_HEADS, QUANTIFIERS, QUANTITY, RELATIVE,
                             SHADES)
from runtime.nlp import load_nlp

__all__ = ["MAX_CAPTION_CHARS", "PriorObject", "Relation", "Priors", "parse", "clean_caption"]

# Longest caption parsed, in characters, after cleaning. LLaVA-style captions are a few hundred
# characters (the captioner stops at ~256 tokens, about 1,200 characters); anything longer is a
# runaway decode. The cap bounds the parse at a few tens of milliseconds on a Jetson CPU; the caption
# is cut at the last sentence end before it, so no half sentence is parsed.
MAX_CAPTION_CHARS = 2000
# Words a compound name keeps before its head (see _Builder._mention).
_MAX_COMPOUND = 3
# spaCy's dependency labels for a subject.
_SUBJ = ("nsubj", "nsubjpass", "csubj")


# -- results --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PriorObject:
    name: str                       # canonical lemma: lowercase, singular, compounds merged ("living room")
    phrase: str                     # surface text of the first mention, without determiners ("two brown dogs")
    attributes: list[str] = dataclasses.field(default_factory=list)   # in order of mention ("small", "wooden")
    count: int | None = None        # "two dogs" -> 2, "a dog" -> 1, "dogs" / "several dogs" -> None


@dataclasses.dataclass(frozen=True)
class Relation:
    subject: int                    # index into Priors.objects
    predicate: str                  # lemma form: "on", "next to", "ride", "sit on", "on the left of"
    object: int                     # index into Priors.objects


@dataclasses.dataclass
class Priors:
    caption: str
    objects: list[PriorObject] = dataclasses.field(default_factory=list)
    relations: list[Relation] = dataclasses.field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    @property
    def triples(self) -> list[tuple[str, str, str]]:
        """Relations by name: [(subject name, predicate, object name)]."""
        return [(self.objects[r.subject].name, r.predicate, self.objects[r.object].name) for r in self.relations]

    def __len__(self) -> int:
        return len(self.objects)

    def select(self, keep: Sequence[int]) -> Priors:
        """These priors with only the objects at indices `keep` (in their order), the relations among them
        re-indexed and those to any other object dropped; the caption stays. What an edited caption parses to."""
        index = {old: new for new, old in enumerate(keep)}
        relations = [dataclasses.replace(r, subject=index[r.subject], object=index[r.object])
                     for r in self.relations if r.subject in index and r.object in index]
        return dataclasses.replace(self, objects=[self.objects[i] for i in keep], relations=relations)

    def relation_graph(self) -> np.ndarray:
        """(K, K) float32 adjacency R, K = len(objects): R[i, i] = 1 (each object relates to itself, the
        identity the relation attention needs) and R[s, o] = 1 for each relation s -> o. Directed: the
        segmenter maps it to mask level as A R A^T, where direction matters. Shape (0, 0) with no objects."""
        k = len(self.objects)
        graph = np.eye(k, dtype=np.float32)
        for r in self.relations:
            graph[r.subject, r.object] = 1.0
        return graph

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Priors:
        return cls(d["caption"], [PriorObject(**o) for o in d.get("objects", [])],
                   [Relation(**r) for r in d.get("relations", [])])


# -- text cleaning ----------------------------------------------------------------------------------------
_DROPPED_CATEGORIES = ("So", "Sk")      # emoji and other symbols; every C* (control, format, unassigned) too
_WS = re.compile(r"\s+")
_CLOSEUP = re.compile(r"\bclose[\s-]+up\b", re.IGNORECASE)


def clean_caption(text: str) -> str:
    """The text the parser sees: NFKC-normalized; emoji, symbols and control/format characters
    replaced by spaces (spaCy parses an emoji as a noun); whitespace collapsed; an all-caps caption
    lower-cased (the tagger reads capitalized words as proper nouns); at most MAX_CAPTION_CHARS long,
    cut at a sentence end."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(" " if unicodedata.category(ch) in _DROPPED_CATEGORIES or unicodedata.category(ch)[0] == "C"
                   else ch for ch in text)
    text = _WS.sub(" ", text).strip()
    letters = [ch for ch in text if ch.isalpha()]
    if len(letters) >= 3 and sum(ch.isupper() for ch in letters) >= 0.8 * len(letters):
        text = text.lower()
    text = _CLOSEUP.sub("closeup", text)
    if len(text) > MAX_CAPTION_CHARS:
        head = text[:MAX_CAPTION_CHARS]
        cut = max(head.rfind(". "), head.rfind("! "), head.rfind("? "))
        text = head[:cut + 1] if cut > 0 else head[:head.rfind(" ")] if " " in head else head
    return text


# -- lexicon from the pipeline's own lemmatizer tables ----------------------------------------------------
class _PipelineLexicon:
    """Known English words (the lemmatizer's WordNet-derived index), to keep typos ("teh yard") and
    names out of object names, and to fix the rule lemmatizer's "riding" -> "rid". Read from the loaded
    pipeline, unlike the fixed word lists of runtime.lexicon, so it is built once per pipeline."""

    def __init__(self, nlp):
        self.words: set[str] = set()
        self.verbs: set[str] = set()
        self.nouns: set[str] = set()
        try:
            tables = nlp.get_pipe("lemmatizer").lookups
            index = tables.get_table("lemma_index")
            for pos in ("noun", "verb", "adj", "adv"):
                self.words.update(index.get(pos, []))
            self.verbs = set(index.get("verb", []))
            self.nouns = set(index.get("noun", []))
            for table in tables.get_table("lemma_exc").values():
                self.words.update(table.keys())
        except (KeyError, ValueError, AttributeError):
            pass     # a pipeline without lookup tables: every word counts as known
        self.stop = set(getattr(nlp.Defaults, "stop_words", ()))
        self.lock = threading.Lock()

    def is_noun(self, word: str) -> bool:
        return word in self.nouns

    def known(self, word: str) -> bool:
        w = word.lower()
        return not self.words or w in self.words or w in self.stop

    def verb_lemma(self, tok) -> str:
        """spaCy's rule lemmatizer strips "-ing"/"-ed" and keeps the first verb it finds ("riding" ->
        "rid", "taped" -> "tap"). A single consonant after a single vowel means the base ends in a
        silent e (the base "rid" would make "ridding"), so prefer stem+e when that is a verb."""
        lemma = tok.lemma_.lower()
        text = tok.lower_
        for suffix in ("ing", "ed"):
            if (text.endswith(suffix) and text[:-len(suffix)] == lemma and lemma + "e" in self.verbs
                    and re.search(r"(^|[^aeiou])[aeiou][^aeiouwxy]$", lemma)):
                return lemma + "e"
        return lemma


_LEXICONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pipeline_lexicon(nlp) -> _PipelineLexicon:
    try:
        return _LEXICONS[nlp]
    except KeyError:
        lex = _LEXICONS[nlp] = _PipelineLexicon(nlp)
        return lex


# -- the parser -----------------------------------------------------------------------------------------
def parse(caption: str, nlp=None) -> Priors:
    """Objects, attributes and relations of a caption. Never raises on text (empty, whitespace, very
    long, non-English, emoji, no nouns): it returns empty or partial priors. Raises TypeError for a
    non-string and runtime.nlp.ParserUnavailableError when no spaCy pipeline is installed."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    text = clean_caption(caption)
    if not any(ch.isalpha() for ch in text):
        return Priors(caption)
    nlp = nlp if nlp is not None else load_nlp()
    lex = _pipeline_lexicon(nlp)
    with lex.lock:                       # spaCy does not promise that one pipeline is safe across threads
        doc = nlp(text)
    if not _looks_english(doc, lex):
        # spaCy's English model tags foreign words as nouns; confident wrong priors are worse than none.
        return Priors(caption)
    return _Builder(doc, lex, caption).build()


def _looks_english(doc, lex: _PipelineLexicon) -> bool:
    """Most words are English words, and either English function words are there (every caption of
    the test corpus has >= 28% of them; French, Spanish, German, Italian, Dutch samples had <= 12%) or
    the text is a plain keyword list of English words ("dog, cat, car")."""
    words = [t for t in doc if t.is_alpha]
    if not words:
        return False
    known = sum(lex.known(t.text) or lex.known(t.lemma_) for t in words) / len(words)
    function = sum(t.lower_ in lex.stop for t in words) / len(words)
    ascii_only = all(t.text.isascii() for t in words)
    return known >= 0.5 and (function >= 0.15 or (known >= 0.9 and ascii_only))


@dataclasses.dataclass
class _Mention:
    token: Any                 # head token
    name: str
    phrase: str
    attributes: list[str]
    count: int | None
    index: int = -1            # object index once merged


class _Builder:
    """One caption's priors from its parse, in passes: noun mentions (dropping frame, position,
    collection and abstract nouns; merging compounds), objects (mentions merged by name), pronoun
    antecedents, predicative attributes, then relations from every preposition and verb."""

    def __init__(self, doc, lex: _PipelineLexicon, caption: str):
        self.doc, self.lex, self.caption = doc, lex, caption
        self.mentions: dict[int, _Mention] = {}     # head token index -> mention
        self.redirect: dict[int, int] = {}          # collection / frame-compound token -> member token
        self.dropped: set[int] = set()              # nouns that are not objects
        self.objects: list[PriorObject] = []
        self.by_name: dict[str, int] = {}
        self.coref: dict[int, int] = {}             # pronoun token index -> object index
        self.relations: list[Relation] = []
        self._seen: set[tuple[int, str, int]] = set()
        self.pending_count: dict[int, int] = {}     # member token -> count its collection implies ("a pair of")

    # ---- objects ---------------------------------------------------------------------------------
    def build(self) -> Priors:
        for tok in self.doc:
            if self._is_head_noun(tok):
                self._add_mention(tok)
        for i, target in list(self.redirect.items()):   # chains: "a pile of a group of ..."
            seen = {i}
            while target in self.redirect and target not in seen:
                seen.add(target)
                target = self.redirect[target]
            self.redirect[i] = target
        for m in sorted(self.mentions.values(), key=lambda m: m.token.i):
            self._merge(m)
        self._resolve_pronouns()
        self._predicative_attributes()
        for tok in self.doc:
            if tok.dep_ in ("prep", "agent") or (tok.dep_ == "prt" and self._pobj(tok) is not None):
                self._preposition(tok)
            if tok.pos_ in ("VERB", "AUX"):
                self._verb(tok)
        return Priors(self.caption, self.objects, self.relations)

    def _is_head_noun(self, tok) -> bool:
        if tok.pos_ not in ("NOUN", "PROPN") or not tok.is_alpha:
            return False
        if tok.dep_ in ("compound", "nmod") and tok.head.pos_ in ("NOUN", "PROPN") and tok.i < tok.head.i:
            return False                          # part of a compound name ("fire" in "fire hydrant")
        if tok.dep_ in ("amod", "compound") and tok.head.pos_ in ("NOUN", "PROPN"):
            return False                          # noun-tagged modifier ("living" in "living room")
        if self._in_hyphen_group(tok) and tok.head.i != tok.i and tok.i < tok.head.i:
            return False
        if tok.pos_ == "PROPN" and not self.lex.known(tok.text):
            return False                          # names and typos are not segmentable classes
        if tok.dep_ == "conj" and tok.head.pos_ == "ADJ":
            return False                          # an adjective mis-tagged as a noun ("warm and inviting")
        if self._colour_of_next(tok):
            return False
        return True

    @staticmethod
    def _colour_of_next(tok) -> bool:
        """A colour word that spaCy hangs on the noun right after it as a subject or object, not a modifier: in
        "A large checkered purple cross below a large checkered purple cross" it reads "purple" as the subject of
        "cross". It is that noun's colour (its own modifiers are the noun's too: see _mention)."""
        return (tok.lower_ in COLORS and tok.head.i == tok.i + 1 and tok.head.pos_ in ("NOUN", "PROPN")
                and tok.dep_ not in ("amod", "compound", "nmod", "conj"))

    @staticmethod
    def _in_hyphen_group(tok) -> bool:
        doc = tok.doc
        return ((tok.i + 1 < len(doc) and doc[tok.i + 1].text == "-")
                or (tok.i > 0 and doc[tok.i - 1].text == "-"))

    def _lemma(self, tok) -> str:
        lemma = tok.lemma_.lower() if tok.lemma_ else tok.lower_
        if lemma in ("people", "persons"):
            return "person"
        low = tok.lower_
        if low.endswith("ies") and lemma == low[:-3] + "y" and self.lex.is_noun(low[:-1]):
            return low[:-1]                       # the rule lemmatizer's "cookies" -> "cooky"
        return lemma

    def _hyphen_word(self, tok) -> tuple[int, int]:
        """Span [start, end) of the hyphenated word containing tok ("black-and-white", "double-decker")."""
        doc, start, end = tok.doc, tok.i, tok.i + 1
        while start >= 2 and doc[start - 1].text == "-":
            start -= 2
        while end + 1 < len(doc) and doc[end].text == "-":
            end += 2
        return start, end

    def _add_mention(self, tok) -> None:
        lemma = self._lemma(tok)
        children = list(tok.children)
        of = next((c for c in children if c.dep_ == "prep" and c.lower_ == "of"), None)
        member = self._pobj(of) if of is not None else None
        member_is_noun = member is not None and member.pos_ in ("NOUN", "PROPN")

        if lemma in COLLECTION and member_is_noun:
            self.redirect[tok.i] = member.i       # "a herd of cows" -> cows
            self.dropped.add(tok.i)
            if lemma == "pair":
                self.pending_count[member.i] = 2
            return
        compounds = [c for c in children if c.dep_ in ("compound", "nmod", "amod") and c.pos_ in ("NOUN", "PROPN")
                     and c.i < tok.i and self.lex.known(c.text) and not self._in_hyphen_group(c)
                     and c.lower_ not in COLORS and c.lower_ not in MATERIALS]
        if lemma in FRAME or (lemma in MEDIA and self._is_frame_use(tok, member_is_noun)):
            if compounds:                         # "a kitchen scene" is a kitchen
                last = compounds[-1]
                self.mentions[tok.i] = self._mention(tok, last.lemma_.lower(), compounds[:-1], phrase_head=last)
            else:
                self.dropped.add(tok.i)
            return
        position = lemma in POSITION and (member_is_noun or lemma not in POSITION_ONLY_WITH_OF)
        if position or lemma in QUANTITY or lemma in ABSTRACT:
            self.dropped.add(tok.i)
            # "various objects such as a lamp and a book": the generic noun stands for its examples.
            examples = [self._pobj(c) for c in children if c.dep_ == "prep" and c.lower_ in ("as", "like", "including")]
            example = next((e for e in examples if e is not None and e.pos_ in ("NOUN", "PROPN")), None)
            if example is not None and lemma in ABSTRACT:
                self.redirect[tok.i] = example.i
            return
        if lemma in COLLECTION and tok.lower_ in ("lots",):
            self.dropped.add(tok.i)
            return
        # spaCy sometimes inverts a compound: "fire" as the head and "hydrant" as its amod to the right.
        inverted = next((c for c in children if c.i == tok.i + 1 and c.pos_ == "NOUN"
                         and c.dep_ in ("amod", "compound") and self.lex.known(c.text)), None)
        if inverted is not None:
            self.mentions[tok.i] = self._mention(tok, f"{tok.lower_} {self._lemma(inverted)}", compounds,
                                                 phrase_head=inverted)
            self.redirect[inverted.i] = tok.i     # modifiers hung on "hydrant" belong to the object
            return
        self.mentions[tok.i] = self._mention(tok, lemma, compounds)

    def _is_frame_use(self, tok, has_of: bool) -> bool:
        """"a photo of a dog", "the picture shows", "in the photo", "this is a photo" -> frame; "a
        picture hanging on the wall" -> a thing."""
        if has_of:
            return True
        if tok.dep_ in _SUBJ and self.lex.verb_lemma(tok.head) in DEPICT:
            return True
        if tok.dep_ == "pobj" and tok.head.lower_ in ("in", "within", "from", "throughout"):
            return True
        return tok.dep_ == "attr" and any(c.dep_ in _SUBJ and c.lower_ in ("this", "it") for c in tok.head.children)

    def _mention(self, tok, lemma: str, compounds: list, phrase_head=None) -> _Mention:
        """One noun phrase: name (compounds + head lemma), attributes, count and surface phrase.
        `phrase_head` is the token the phrase ends at when it is not `tok` ("kitchen" in "kitchen scene")."""
        doc = tok.doc
        name_ids: set[int] = set()
        for c in compounds:
            name_ids |= {t.i for t in c.subtree if t.i == c.i or (
                t.dep_ in ("compound", "nmod") and t.pos_ in ("NOUN", "PROPN") and self.lex.known(t.text))}
        # Real compound names have at most three words before the head; more is a run-on ("dog dog dog").
        name_ids = set(sorted(name_ids)[-_MAX_COMPOUND:])
        head = lemma
        # A hyphenated head is one word ("t-shirt"); a hyphenated modifier is an attribute ("double-decker").
        start, end = self._hyphen_word(tok)
        if end - start > 1 and start < tok.i:
            head = "".join(t.lower_ for t in doc[start:tok.i]) + lemma
            name_ids |= set(range(start, tok.i))
        # Modifiers of the head and of its compound words: in "a yellow school bus" spaCy hangs "yellow"
        # on "school", but it describes the bus.
        modifiers = [c for c in tok.children if c.i < tok.i]
        modifiers += [c for k in name_ids for c in doc[k].children if c.dep_ in ("amod", "nummod") and c.i < k]
        colours = [c for c in modifiers if self._colour_of_next(c)]
        modifiers += [g for c in colours for g in c.children if g.i < c.i]
        attributes: list[str] = []
        count = None
        shade = None
        for c in sorted(modifiers, key=lambda t: t.i):
            if c.i in name_ids:
                continue
            low = c.lower_
            if c.dep_ in ("nummod", "det", "predet") or (c.dep_ == "quantmod" and low in NUMBERS):
                n = _number(c) if c.dep_ == "nummod" or low in NUMBERS else None
                if n is not None and not (n == 1 and tok.tag_ in ("NNS", "NNPS")):
                    count = n
                continue
            if f"{low} {head}" in KNOWN_COMPOUNDS and c.i == tok.i - 1:
                name_ids.add(c.i)                      # "hot dog", "remote control"
                continue
            if (c.dep_ not in ("amod", "compound", "nmod", "npadvmod") and not (c.dep_ == "advmod" and c.pos_ == "ADJ")
                    and c not in colours):
                continue
            words = self._attribute_words(c)
            # "dark blue umbrella": spaCy often makes both words modifiers of the noun; one attribute.
            if low in SHADES and c.i + 1 < len(doc) and doc[c.i + 1].lower_ in COLORS and doc[c.i + 1] in modifiers:
                shade = low
                continue
            if shade is not None and words and low in COLORS:
                words[0] = f"{shade} {words[0]}"
            shade = None
            attributes += [w for w in words if w not in attributes]
        name = " ".join([doc[i].lower_ for i in sorted(name_ids) if i < start] + [head])
        end_tok = phrase_head if phrase_head is not None else tok
        keep = (name_ids | {tok.i, end_tok.i} | {t.i for c in modifiers if c.dep_ in ("amod", "nummod", "compound")
                                          or c in colours for t in c.subtree if t.i < end_tok.i})
        lo = max(min(keep), end_tok.i - 8)            # the phrase is for display: keep it short
        phrase = " ".join(t.text for t in doc[lo:end_tok.i + 1] if t.i in keep or t.text == "-").replace(" - ", "-")
        return _Mention(tok, name, phrase, attributes, count)

    def _attribute_words(self, mod) -> list[str]:
        """Attributes carried by one pre-nominal modifier: "small" -> ["small"], "black and white" ->
        ["black", "white"], "double-decker" -> ["double-decker"], "stainless steel" -> ["stainless steel"]."""
        start, end = self._hyphen_word(mod)
        if end - start > 1:
            return ["".join(t.lower_ for t in mod.doc[start:end])]
        low = mod.lower_
        if low in QUANTIFIERS or low in NUMBERS or not mod.is_alpha:
            return []
        if mod.pos_ in ("NOUN", "PROPN") and low not in COLORS and low not in MATERIALS:
            return []                              # a typo, a name, or a noun the parser could not place
        if mod.pos_ not in ("ADJ", "VERB", "NOUN", "PROPN", "ADV"):
            return []
        prefix = [c.lower_ for c in mod.children if c.i < mod.i and c.dep_ in ("amod", "advmod", "npadvmod", "compound")
                  and (c.lower_ in SHADES or c.lower_ in COLORS or c.lower_ in MATERIALS)]
        words = [" ".join(prefix + [low])] if prefix and (low in COLORS or low in MATERIALS) else [low]
        for conj in (c for c in mod.children if c.dep_ == "conj"):
            words += self._attribute_words(conj)
        return words

    def _merge(self, m: _Mention) -> None:
        if m.token.i in self.pending_count and m.count is None:
            m.count = self.pending_count[m.token.i]
        idx = self.by_name.get(m.name)
        if idx is None:
            idx = self.by_name[m.name] = len(self.objects)
            self.objects.append(PriorObject(m.name, m.phrase, list(m.attributes), m.count))
        else:
            obj = self.objects[idx]
            obj.attributes += [a for a in m.attributes if a not in obj.attributes]
            if m.count is not None and (obj.count is None or m.count > obj.count):
                obj.count = m.count
        m.index = idx

    def _obj(self, tok) -> int | None:
        """Object index a token stands for: its mention, a collection's member, a pronoun's antecedent."""
        if tok is None:
            return None
        i = self.redirect.get(tok.i, tok.i)
        if i in self.mentions:
            return self.mentions[i].index
        return self.coref.get(i)

    # ---- pronouns ------------------------------------------------------------------------------------
    def _resolve_pronouns(self) -> None:
        """he/she -> the latest person; it -> the latest non-person subject before the pronoun's clause;
        they -> the latest plural. Subjects of earlier sentences are preferred (the usual antecedent in a
        caption: "A man is walking a dog. He is wearing ...")."""
        ordered = sorted(self.mentions.values(), key=lambda m: m.token.i)
        for tok in self.doc:
            if tok.pos_ != "PRON" or tok.lower_ not in PERSONAL or tok.dep_ == "expl":
                continue
            kind = PERSONAL[tok.lower_]
            if kind == "thing" and self._is_dummy_it(tok):
                continue
            sent_start = tok.sent.start
            before = [m for m in ordered if m.token.i < tok.i and self._fits(m, kind)]
            if not before:
                continue
            earlier = [m for m in before if m.token.i < sent_start]
            subjects = [m for m in (earlier or before) if m.token.dep_ in _SUBJ + ("ROOT",)]
            pick = (subjects or earlier or before)[-1]
            self.coref[tok.i] = pick.index

    @staticmethod
    def _fits(m: _Mention, kind: str) -> bool:
        person = m.name.split()[-1] in PERSON
        plural = m.token.tag_ in ("NNS", "NNPS") or (m.count or 1) > 1
        if kind == "person":
            return person and not plural
        if kind == "plural":
            return plural
        return not person and not plural

    @staticmethod
    def _is_dummy_it(tok) -> bool:
        """"It is a sunny day", "it looks like": no referent."""
        head = tok.head
        return tok.dep_ in _SUBJ and head.lemma_ in COPULAS and not any(c.dep_ == "prep" for c in head.children)

    # ---- attributes after the copula ----------------------------------------------------------------
    def _predicative_attributes(self) -> None:
        """"The car is red", "the dog looks relaxed", and the adjectival passive "the window is
        broken" / "appears to be relaxed" (a participle with no agent, object or preposition)."""
        for tok in self.doc:
            adjectival_passive = (tok.tag_ == "VBN" and any(c.dep_ == "auxpass" for c in tok.children)
                                  and not any(c.dep_ in ("agent", "dobj", "prep", "dative") for c in tok.children))
            if not (tok.dep_ in ("acomp", "oprd") and tok.pos_ in ("ADJ", "VERB")) and not adjectival_passive:
                continue
            words = []
            for a in [tok] + [c for c in tok.subtree if c.dep_ == "conj"]:
                if a.lower_ not in QUANTIFIERS and a.is_alpha:
                    shade = [c.lower_ for c in a.children if c.i < a.i and c.lower_ in SHADES]
                    words.append(" ".join(shade + [a.lower_]) if a.lower_ in COLORS and shade else a.lower_)
            for s in self._subjects(tok if adjectival_passive else tok.head):
                obj = self.objects[s]
                obj.attributes += [w for w in words if w not in obj.attributes]

    # ---- relations ---------------------------------------------------------------------------------
    def _add(self, subjects: Iterable[int], predicate: str, objects: Iterable[int]) -> None:
        objects = list(objects)
        for s in subjects:
            for o in objects:
                if s is None or o is None or s == o:
                    continue
                key = (s, predicate, o)
                if key not in self._seen:
                    self._seen.add(key)
                    self.relations.append(Relation(s, predicate, o))

    @staticmethod
    def _pobj(prep):
        if prep is None:
            return None
        return next((c for c in prep.children if c.dep_ in ("pobj", "dobj")), None)

    def _with_conjuncts(self, tok) -> list:
        """tok and the nouns coordinated with it ("eggs, milk, and vegetables")."""
        out = [tok]
        for c in tok.children:
            if c.dep_ in ("conj", "appos") and c.pos_ in ("NOUN", "PROPN", "PRON"):
                out += self._with_conjuncts(c)
        return out

    def _objects_of(self, tok) -> list[int]:
        """Objects a noun phrase stands for, with its conjuncts; a collection stands for its members
        ("a group of zebras and giraffes" -> zebra, giraffe)."""
        out = []
        for t in self._with_conjuncts(tok):
            t = self._partitive(t)
            if t.i in self.redirect and self.redirect[t.i] != t.i:
                out += self._objects_of(t.doc[self.redirect[t.i]])
            elif (o := self._obj(t)) is not None:
                out.append(o)
        return out

    def _partitive(self, tok):
        """"some of them", "one of the dogs", and a position outside a preposition ("buildings line
        both sides of the street") stand for what follows "of"."""
        if tok.i in self.mentions or tok.i in self.redirect:
            return tok
        if tok.lower_ not in PARTITIVES and not (tok.i in self.dropped and tok.lemma_.lower() in POSITION):
            return tok
        of = next((c for c in tok.children if c.dep_ == "prep" and c.lower_ == "of"), None)
        member = self._pobj(of)
        return member if member is not None else tok

    def _noun_subjects(self, noun, modifier) -> list[int]:
        """Subjects for a modifier (a preposition or participle) attached to `noun`. When it follows a
        whole coordination ("a cat and a dog on a sofa", "a man and a woman sitting at a table") it
        applies to every conjunct that has no modifier of its own."""
        if noun.i in self.redirect:
            return self._objects_of(noun)
        root = noun
        while root.dep_ == "conj" and root.head.pos_ in ("NOUN", "PROPN", "PRON"):
            root = root.head
        members = self._with_conjuncts(root)
        # Only a coordination that is the whole caption or a subject: after an object ("has a bathtub
        # and a sink under a mirror") a trailing modifier usually belongs to the last conjunct alone.
        predicative = root.dep_ in ("ROOT", "attr") + _SUBJ
        if (len(members) == 1 or not predicative or modifier.i < max(m.i for m in members)
                or modifier.lower_ == "of"):
            return [o for o in [self._obj(noun)] if o is not None]

        def own_modifier(m) -> bool:
            return any((c.dep_ == "prep" and c.lower_ != "of") or c.dep_ in ("acl", "relcl") for c in m.children)

        chosen = [m for m in members if m.i == noun.i or not own_modifier(m)]
        return [o for o in (self._obj(m) for m in chosen) if o is not None]

    def _subjects(self, verb, seen: frozenset = frozenset()) -> list[int]:
        """Objects doing what `verb` says: its subject (and their conjuncts), the noun a participle or
        relative clause modifies, or, for a verb without one, the subject of the verb it is coordinated
        with or complements ("typing on a laptop and wearing a headset")."""
        if verb.i in seen:
            return []
        seen = seen | {verb.i}
        subjects = [c for c in verb.children if c.dep_ in _SUBJ]
        if subjects:
            if subjects[0].lower_ in RELATIVE and verb.dep_ == "relcl":
                return self._noun_subjects(verb.head, verb)
            # Several subject children is the parser splitting one coordination ("a lamp and a book are").
            return [o for c in subjects for o in self._objects_of(c)]
        if verb.dep_ == "acl" or verb.dep_ == "relcl":
            return self._noun_subjects(verb.head, verb)
        if verb.dep_ == "amod" and verb.head.pos_ in ("NOUN", "PROPN"):
            return self._noun_subjects(verb.head, verb)
        if verb.lemma_ == "be" or verb.lemma_ in COPULAS:
            expl = any(c.dep_ == "expl" for c in verb.children)
            attrs = [c for c in verb.children if c.dep_ == "attr"]
            if attrs and (expl or not any(c.dep_ in _SUBJ for c in verb.children)):
                return [o for a in attrs for o in self._objects_of(a)]      # "there are eggs", "behind him is a window"
        if verb.dep_ in ("conj", "xcomp", "advcl", "ccomp") and verb.head.pos_ in ("VERB", "AUX"):
            return self._subjects(verb.head, seen)
        return []

    def _frame_subject(self, verb) -> bool:
        """The verb's subject is the frame: "The image shows ...", "This photo depicts ..."."""
        subj = next((c for c in verb.children if c.dep_ in _SUBJ), None)
        if subj is None:
            return False
        return subj.i in self.dropped and self.redirect.get(subj.i) is None and (
            subj.lemma_.lower() in FRAME or subj.lemma_.lower() in MEDIA)

    @staticmethod
    def _is_copula(verb, lemma: str) -> bool:
        """"is on the table" -> "on"; but "looking at a phone" keeps its verb: "look" is a copula
        only with an adjective or a complement ("looks happy", "appears to be")."""
        return lemma == "be" or (lemma in COPULAS and any(c.dep_ in ("acomp", "xcomp", "attr") for c in verb.children))

    def _verb(self, verb) -> None:
        lemma = self.lex.verb_lemma(verb)
        if lemma in ("be",) and verb.pos_ == "AUX" and not any(c.dep_ == "dobj" for c in verb.children):
            return
        prt = next((c for c in verb.children if c.dep_ == "prt" and self._pobj(c) is None), None)
        predicate = f"{lemma} {prt.lower_}" if prt is not None else lemma
        # Passive with an agent: "a horse ridden by a man" -> man ride horse.
        agent = next((c for c in verb.children if c.dep_ == "agent"), None)
        if agent is not None and self._pobj(agent) is not None:
            doers = self._objects_of(self._pobj(agent))
            patients = self._subjects(verb)
            self._add(doers, predicate, patients)
        dobjs = [c for c in verb.children if c.dep_ == "dobj"]
        if not dobjs or self._frame_subject(verb):
            return
        subjects = self._subjects(verb)
        for d in dobjs:
            self._add(subjects, predicate, self._objects_of(d))

    def _preposition(self, prep) -> None:
        low = prep.lower_
        if low in NON_RELATION_PREPS or prep.dep_ == "agent" or prep.head.lower_ in NOT_PREP_HEADS:
            return
        pobj = self._pobj(prep)
        if pobj is None:
            return
        words = [low]
        anchor = prep.head
        # "on" + "top of X": the position noun and its "of" join the predicate; X is the object.
        if pobj.lemma_.lower() in POSITION and pobj.i in self.dropped:
            inner = next((c for c in pobj.children if c.dep_ == "prep" and c.lower_ == "of"), None)
            if inner is None or self._pobj(inner) is None:
                return                                  # "on the left": no object
            words = [t.lower_ for t in prep.doc[prep.i:inner.i + 1] if not t.is_punct]
            pobj = self._pobj(inner)
        if low == "of":
            # "the top of X" is consumed above; "a herd of cows", "a photo of a dog" are not relations.
            if anchor.i in self.dropped or anchor.lemma_.lower() in POSITION:
                return
        # "next to X", "close to X": the adverb is part of the preposition.
        if anchor.pos_ in ("ADV", "ADJ") and anchor.lower_ in PREP_HEADS:
            words = [anchor.lower_] + words
            anchor = anchor.head
            while anchor.pos_ == "ADV" and anchor.head.i != anchor.i:
                anchor = anchor.head
        elif anchor.pos_ == "ADJ" and anchor.dep_ == "acomp":
            anchor = anchor.head                        # "the dog looks happy on the couch"
        predicate = " ".join(words)
        objects = self._objects_of(pobj)
        if not objects:
            return
        if anchor.pos_ in ("NOUN", "PROPN", "PRON"):
            self._add(self._noun_subjects(anchor, prep), predicate, objects)
            return
        if anchor.pos_ not in ("VERB", "AUX"):
            return
        lemma = self.lex.verb_lemma(anchor)
        if self._frame_subject(anchor):
            # "The image shows a room with a sofa": the preposition describes the shown thing.
            topics = [o for d in anchor.children if d.dep_ == "dobj" for o in self._objects_of(d)]
            self._add(topics, predicate, objects)
            return
        subjects = self._subjects(anchor)
        if self._is_copula(anchor, lemma):
            self._add(subjects, predicate, objects)
        else:
            self._add(subjects, f"{lemma} {predicate}", objects)


def _number(tok) -> int | None:
    low = tok.lower_
    if low in NUMBERS:
        return NUMBERS[low]
    digits = low.replace(",", "")
    if digits.isdigit() and len(digits) <= 6:
        return int(digits)
    return None