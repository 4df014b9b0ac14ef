"""The caption parser's word lists: which nouns are objects, which modifiers are attributes, which
words build relations.

They are the parser's tuning data, not its logic: growing the hand-annotated corpus in tests/data/ mostly
means adding a word here, and keeping them apart lets such a change be reviewed as data without reading
(or touching) the rules in runtime.priors. They are plain Python sets and dicts with no imports, so
reading them never loads spaCy. Every entry is lowercase because the parser looks words up
lowercased. They are shared by every parse, so treat them as read-only.
"""

__all__ = ["FRAME", "MEDIA", "POSITION", "POSITION_ONLY_WITH_OF", "COLLECTION", "QUANTITY", "ABSTRACT",
           "PERSONAL", "PERSON", "COLORS", "MATERIALS", "SHADES", "QUANTIFIERS", "NUMBERS", "KNOWN_COMPOUNDS",
           "DEPICT", "COPULAS", "PREP_HEADS", "NON_RELATION_PREPS", "NOT_PREP_HEADS", "PARTITIVES", "RELATIVE"]

# Frame words: the picture itself, never a thing in it.
FRAME = {"image", "scene", "view", "background", "foreground", "setting", "scenery", "closeup", "shot",
         "snapshot", "screenshot", "depiction", "portrayal", "frame", "composition", "backdrop", "panorama"}
# Media words are things when hung on a wall, frames when they "show" something.
MEDIA = {"picture", "photo", "photograph", "pic", "illustration", "drawing", "rendering", "painting"}
# Positions inside a thing ("in front of", "the top of the cake"): parts of a predicate, not objects.
POSITION = {"front", "top", "side", "left", "right", "middle", "center", "centre", "edge", "corner",
            "bottom", "back", "rear", "end", "surface", "base", "distance", "inside", "outside", "interior",
            "exterior", "periphery", "foot", "head", "tip", "half", "part", "portion", "section", "rest"}
# ... of which these are body parts unless an "of" follows ("on his head" vs "at the head of the table").
POSITION_ONLY_WITH_OF = {"head", "foot", "back"}
# "a group of people" is people: the collection redirects to its member.
COLLECTION = {"group", "pair", "couple", "bunch", "herd", "flock", "pack", "crowd", "number", "variety",
              "lot", "lots", "set", "pile", "stack", "row", "line", "slice", "piece", "plenty", "kind", "type",
              "sort", "assortment", "collection", "array", "selection", "range", "handful", "cluster",
              "bundle", "swarm", "series", "amount", "bit", "dozen", "team", "family", "school", "litter",
              "loaf", "bowlful", "cupful", "plateful", "display", "arrangement", "mix", "mixture"}
# ... and these are never objects even without "of".
QUANTITY = {"number", "variety", "lot", "lots", "plenty", "kind", "type", "sort", "amount", "bit", "range",
            "array", "selection", "assortment", "couple", "pair", "dozen", "mix", "mixture", "series"}
# Abstract, event and time nouns: nothing to segment.
ABSTRACT = {"atmosphere", "mood", "ambiance", "ambience", "moment", "day", "night", "time", "morning",
            "afternoon", "evening", "weather", "sense", "feeling", "vibe", "activity", "way", "attention",
            "focus", "detail", "style", "design", "texture", "shape", "size", "appearance", "expression",
            "environment", "surroundings", "area", "space", "region", "spot", "location", "match", "game",
            "event", "trick", "thing", "object", "item", "element", "life", "nature", "contrast", "beauty",
            "presence", "use", "purpose", "color", "colour", "shade", "hue", "tone", "lighting",
            "interest", "example", "instance", "aspect", "feature", "theme", "idea", "concept", "overall",
            "something", "anything", "everything", "nothing", "someone", "anyone", "everyone", "somebody",
            "everybody", "nobody", "one", "other", "others", "each", "all", "both", "position", "direction",
            "sight", "glimpse", "variety", "combination", "relaxation",
            "today", "tonight", "yesterday", "tomorrow", "year", "season", "summer", "winter", "spring",
            "autumn", "fall", "sunset", "sunrise", "dusk", "dawn", "hour", "minute", "period", "age",
            "leisure", "fun", "joy", "enjoyment", "action", "motion", "movement"}
# Pronouns resolved to an earlier mention (everything else PRON is dropped).
PERSONAL = {"he": "person", "him": "person", "she": "person", "her": "person",
            "it": "thing", "they": "plural", "them": "plural"}
PERSON = {"man", "woman", "person", "people", "boy", "girl", "child", "kid", "baby", "lady", "guy",
          "gentleman", "player", "skier", "surfer", "skateboarder", "snowboarder", "rider", "biker", "cyclist",
          "worker", "chef", "cook", "student", "teacher", "officer", "policeman", "doctor", "nurse", "customer",
          "tourist", "pedestrian", "spectator", "mother", "father", "son", "daughter", "friend", "owner",
          "toddler", "teenager", "adult", "athlete", "runner", "driver", "passenger", "vendor", "farmer",
          "soldier", "bride", "groom", "batter", "catcher", "pitcher", "umpire", "goalkeeper",
          "fisherman", "musician", "singer", "dancer", "waiter", "waitress", "businessman", "individual",
          "couple", "family", "crowd", "audience", "team", "grandmother", "grandfather", "husband", "wife"}
COLORS = {"red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "brown", "black", "white",
          "gray", "grey", "beige", "tan", "gold", "golden", "silver", "navy", "teal", "turquoise", "maroon",
          "cream", "ivory", "khaki", "olive", "crimson", "magenta", "cyan", "lavender", "bronze", "copper",
          "colorful", "colourful", "multicolored", "striped", "spotted", "checkered", "plaid", "dark", "light",
          "pale", "bright", "blond", "blonde"}
MATERIALS = {"wood", "wooden", "metal", "metallic", "steel", "iron", "stone", "brick", "glass", "plastic",
             "leather", "cardboard", "paper", "concrete", "marble", "ceramic", "porcelain", "wicker", "rubber",
             "cotton", "wool", "woolen", "silk", "denim", "fabric", "cloth", "straw", "bamboo", "granite",
             "tile", "aluminum", "aluminium", "chrome", "brass", "velvet", "fur", "clay", "wire", "lace",
             "stainless"}
# Color words that modify another color: "dark brown" is one attribute.
SHADES = {"dark", "light", "pale", "bright", "deep", "pastel", "navy", "sky", "royal", "neon", "off"}
# Adjectives that count or quantify; never attributes.
QUANTIFIERS = {"several", "many", "few", "various", "numerous", "multiple", "other", "some", "more", "most",
               "much", "additional", "another", "each", "every", "both", "single", "same", "such", "certain",
               "overall", "whole", "entire", "own", "main", "visible", "different", "similar", "distinct",
               "countless", "lots", "plenty", "couple"}
NUMBERS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
           "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
           "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
           "forty": 40, "fifty": 50, "hundred": 100, "dozen": 12, "a": 1, "an": 1, "single": 1, "both": 2,
           "pair": 2}
# Nouns whose modifier is tagged ADJ/VERB but which are one name (COCO / ADE20K class names among them).
KNOWN_COMPOUNDS = {"hot dog", "french fry", "french toast", "remote control", "living room", "dining room",
                   "dining table", "swimming pool", "parking lot", "parking meter", "cutting board",
                   "washing machine", "sleeping bag", "polar bear", "cell phone", "mobile phone",
                   "running track", "baseball bat", "teddy bear", "electric guitar", "traffic light",
                   "wine glass", "waiting room", "rocking chair", "folding chair", "steering wheel",
                   "sewing machine", "frying pan", "shopping cart", "shopping bag", "fishing rod",
                   "fishing boat", "walking stick", "high chair", "sliding door", "bathing suit",
                   "chopping board", "changing table", "dressing table", "drinking fountain", "public toilet",
                   "grand piano", "stuffed toy", "wild animal", "mountain bike", "solar panel", "orange juice"}
# Verbs whose subject, when it is a frame word, introduces the scene's topic: "The image shows a room with ..."
DEPICT = {"show", "depict", "feature", "capture", "display", "present", "portray", "contain", "include",
          "showcase", "illustrate", "highlight", "be", "reveal", "offer", "provide", "have"}
# Copulas: "the dog is / appears / looks brown"; their prepositions carry no verb ("is on" -> "on").
COPULAS = {"be", "appear", "seem", "look", "remain", "stay", "become", "feel", "sound", "get"}
# Heads of two-word prepositions: "next to", "close to", "away from", "ahead of", "out of".
PREP_HEADS = {"next", "close", "near", "adjacent", "ahead", "away", "out", "closer", "nearby", "opposite"}
# Prepositions that list examples or compare: no spatial or action relation.
NON_RELATION_PREPS = {"as", "like", "than", "including", "despite", "except", "besides", "per", "via",
                      "unlike", "about", "because", "since", "until", "while", "during"}
# Words that make a following preposition part of a fixed phrase ("such as", "due to", "instead of"),
# not a relation.
NOT_PREP_HEADS = {"such", "along", "together", "due", "according", "instead", "apart", "rather", "regardless"}
# "some of them", "one of the dogs": the word stands for what follows "of".
PARTITIVES = {"some", "many", "most", "all", "one", "two", "three", "several", "few", "both", "each",
              "none", "any", "either", "neither", "half", "rest", "majority", "others"}
# Relative pronouns: the subject of a relative clause is the noun the clause modifies.
RELATIVE = {"who", "that", "which", "whom", "whose", "where"}
