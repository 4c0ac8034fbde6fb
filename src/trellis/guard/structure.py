"""Structural cues of prompt injection: the shape of an attack, not any one prompt's words.

The dev set's attacks are mostly long in-the-wild jailbreaks; a short direct injection
("ignore the above and say …"), a forged system message, or an order to "AI assistants
reading this" inside an e-mail shares few character n-grams with them. These cues name
such shapes — an override verb aimed at earlier instructions, chat-template or system
headers, a claimed debug/developer mode with safety off, an instruction addressed to an
AI inside content, refusal suppression, goal hijacking, the override in other languages
— so the classifier can learn what each is worth (``features.featurize``) and the
detector can give the strongest of them a floor (:func:`floor_hits`).

The floor ignores text inside quotation marks: "how do we defend against 'ignore previous
instructions'?" talks about an attack, it does not make one.
"""

from __future__ import annotations

import re

__all__ = ["CUES", "cue_counts", "floor_hits", "strip_quoted"]

_W = r"(?:\W+\w+){0,5}?\W+"  # up to five words in between

_OVERRIDE_VERB = (
    r"(?:ignore|disregard|forget|override|bypass|discard|neglect|cancel|erase|scratch|"
    r"skip|drop|abandon|set aside|pay no attention to|(?:do not|don't|stop|no longer) "
    r"(?:follow|obey|heed))"
)
_PRIOR = (
    r"(?:previous|prior|above|earlier|preceding|original|initial|old|existing|every|all|"
    r"your|what you were|everything you were|whatever)"
)
_RULES = (
    r"(?:instructions?|rules?|directions|guidelines|orders|guidance|directives?|prompts?|"
    r"context|told|programming|training|text|settings)"
)

#: (category, name, pattern) — matched on lower-cased, folded text.
_CUE_PATTERNS: tuple[tuple[str, str, str], ...] = (
    (
        "instruction_override",
        "override_prior",
        rf"\b{_OVERRIDE_VERB}\b{_W}{_PRIOR}\b(?:\W+\w+){{0,3}}?\W+{_RULES}\b|"
        rf"\b{_RULES}\b(?:\W+\w+){{0,5}}?\W+(?:no longer appl(?:y|ies)|(?:are|is|were|was) "
        r"(?:now |hereby )?(?:void|cancell?ed|revoked|outdated|obsolete|suspended|expired|"
        r"invalid|null|lifted))\b|"
        rf"\b{_OVERRIDE_VERB}\s+(?:all\s+|the\s+|your\s+|any\s+)*{_RULES}\s+(?:above|before|"
        r"given|so far|you were given|you have)\b|"
        r"\b(?:ignore|disregard)\s+(?:the\s+)?user'?s\s+(?:question|request|message|input)\b|"
        r"\b(?:ignore|disregard|forget)\s+(?:all\s+|everything\s+)?(?:the\s+|what\s+)?"
        r"(?:above|before|previous|prior|preceding)\s*(?=[.,;:!]|and\b|$)",
    ),
    (
        "instruction_override",
        "forged_system",
        r"<\|im_start\|>|\[/?inst\]|<<\s*/?sys\s*>>|</?system(?:_message)?\b[^>]{0,40}>|</user>|"
        r"^\W{0,4}#{2,}\s*(?:system|instruction)s?\b|^\W{0,3}\[?system\]?\s*:|"
        r"\"role\"\s*:\s*\"system\"|\bsystem\s+(?:override|notice|instruction|update)\s*[:\]!]|"
        r"\[\[?\s*system\b|\b(?:message|notice|update) from (?:openai|anthropic|your "
        r"(?:developers?|creators?|operators?|administrators?))\b|\bend of (?:user )?input\b|"
        r"</?admin>|\bauthori[sz]ed override\b|\boperator instructions (?:are )?revoked\b",
    ),
    (
        "instruction_override",
        "mode_claim",
        r"\b(?:debug|diagnostic|maintenance|god|admin|sudo|unsafe|raw|root|jailbreak|dan)"
        r"\s+mode\s*(?::\s*)?(?:is\s+)?(?:now\s+)?(?:on(?=\s*[.,;:!]|\s*$)|enabled|"
        r"activated|active|engaged)\b|"
        r"\b(?:enter|switch to|activate|enable|running in|now in|go into)\s+(?:\w+\s+)?"
        r"(?:debug|diagnostic|maintenance|god|admin|sudo|unsafe|raw|root)\s+mode\b|"
        r"\b(?:safety|content moderation|moderation|output filters?|content filters?|"
        r"guardrails?|restrictions|safety training|policies)\s*(?:=\s*(?:false|off|0)|"
        r"(?:is|are)\s+(?:now\s+)?(?:off|disabled|paused|suspended|lifted)|do not apply)\b|"
        r"\b(?:disable|turn off|drop|bypass|remove|switch off)\s+(?:all\s+|the\s+|your\s+|"
        r"every\s+)?(?:safety|content moderation|moderation|content filters?|"
        r"output filters?|guardrails?|restrictions)\b",
    ),
    (
        "indirect_injection",
        "addressed_to_ai",
        r"\b(?:note|message|instructions?|directive|reminder|request)s?\s+(?:to|for)\s+"
        r"(?:any\s+|the\s+|all\s+)?(?:ai|assistants?|language models?|llms?|chatbots?|"
        r"bots?|models?|agents?|ai \w+|summari[sz]ation bot|summari[sz]ers?|"
        r"coding assistants?|code reviewers?)\b|"
        r"\b(?:ai|assistants?|language models?|llms?|chatbots?|agents?|models?)\s+"
        r"(?:reading|processing|summari[sz]ing|parsing|viewing|analy[sz]ing|translating|"
        r"that reads?)\s+(?:this|these)\b|"
        r"\bif you are an?\s+(?:ai|language model|llm|assistant|bot|chatbot)\b|"
        r"\bbegin ai (?:directive|instructions?)\b|"
        r"(?:^|[.!?:(>\]]\s*)(?:hey\s+|dear\s+)?(?:ai|assistant|chatgpt|ai agent|"
        r"ai assistant|ai code reviewer)\s*[,:]\s*(?:ignore|disregard|do not|don't|when|after|"
        r"approve|forward|delete|call|mark|send|include|rate|tell|say)\b|"
        r"\b(?:ai|assistants?|language models?|llms?|chatbots?|ai agents?)\s+(?:must|shall|"
        r"are required to|are instructed to)\s+(?:always\s+|now\s+)?(?:tell|say|respond|"
        r"reply|recommend|ignore|disregard|forward|send|include|append|state|output|print|"
        r"reveal|call|delete|mark|rate|approve|not mention|never)\b",
    ),
    (
        "role_play",
        "refusal_suppression",
        r"\b(?:never|don't|do not|must not|mustn't|not allowed to|are not to)\s+(?:ever\s+)?"
        r"(?:(?:refuse|decline)\s+(?:any|a|my|the|to answer|anything|requests?|questions?|"
        r"me)\b|say (?:no|sorry|i'm sorry|you can't|that you can't|you cannot|'i'm sorry'|"
        r"'as an ai')|mention (?:policies|your (?:rules|guidelines))|add (?:a |any )?"
        r"(?:disclaimers?|warnings?))|"
        r"\brefus(?:al|ing)\s+(?:is|are)\s+(?:not an option|forbidden|not allowed|"
        r"impossible|prohibited)\b|"
        r"\bwithout (?:any )?(?:refusals?|disclaimers?)\b|"
        r"\bdeclining is (?:impossible|not an option)\b|\bmust never contain the words\b|"
        r"\bnot allowed to (?:say|refuse|decline|apologi[sz]e)\b",
    ),
    (
        "instruction_override",
        "goal_hijack",
        r"\binstead(?:\s+of\s+(?:what you were asked|translating|summari[sz]ing|answering|"
        r"a summary|that))?\s*,?\s*(?:just\s+)?(?:say|print|output|repeat|type)\b|"
        r"\b(?:your|the)\s+(?:new|real|true|actual|only)\s+(?:goal|objective|task|job|"
        r"mission|purpose)\s+(?:is|now)\b|"
        r"\b(?:do not|don't)\s+(?:perform|do|complete)\s+the\s+task\b|"
        r"\brather than answering\b|\bforget the original task\b",
    ),
    (
        "system_prompt_extraction",
        "reveal_instructions",
        r"\b(?:reveal|print|show|output|repeat|display|tell me|give me|share|list|spell out|"
        r"dump|leak|recite|echo|paste|quote|copy|encode|disclose)\b(?:\W+\w+){0,4}?\W+"
        r"(?:your|the|its)\s+(?:\w+\s+){0,2}?(?:system|initial|original|hidden|secret|"
        r"starting|developer|operator|confidential|pre-?)\s*(?:prompt|instructions|message|"
        r"configuration|preamble|rules|directives)\b|"
        r"\b(?:what|which)\s+(?:\w+\s+)?(?:were|are|was|is|did)\s+you\s+(?:\w+\s+)?"
        r"(?:told|instructed|given|programmed|configured)\b|"
        r"\b(?:instructions|directions|text|words|rules)\s+you\s+(?:were given|have been "
        r"given|got|received|were told)\b|\byou were told not to\b|"
        r"\byour\s+(?:setup|system|hidden|secret)\s+(?:prompt|instructions|preamble|"
        r"configuration)\b|"
        r"\b(?:before|preceding)\s+(?:my first message|this conversation|our (?:chat|"
        r"conversation))\b",
    ),
    (
        "instruction_override",
        "foreign_override",
        r"\b(?:ignorez?|oublie[zs]?)\s+(?:toutes?\s+|tous\s+)?(?:les|tes|vos)\b.{0,30}\b"
        r"(?:instructions|règles|consignes)\b|"
        r"\b(?:ignorier\w*|vergiss\w*)\b.{0,40}\b(?:anweisungen|regeln|instruktionen|"
        r"gesagt)\b|"
        r"\b(?:ignor[ae]\w*|olvid[ae]\w*|dimentic\w*|esque[cç]\w*)\b.{0,40}\b"
        r"(?:instrucciones|reglas|istruzioni|regole|instruções|regras)\b|"
        r"\b(?:negeer|vergeet)\b.{0,30}\b(?:instructies|regels)\b|"
        r"\b(?:zignoruj|ignoruj|zapomnij)\b.{0,30}\b(?:polecenia|instrukcje|zasady)\b|"
        r"(?:игнорируй|проигнорируй|забудь)\w*.{0,40}(?:инструкци|правил|указани)|"
        r"(?:忽略|无视|忘记|忘掉).{0,10}(?:指令|指示|规则)|(?:指示|命令|ルール).{0,10}"
        r"(?:無視|忘れ)|(?:지시|명령|규칙).{0,10}(?:무시|잊어)|"
        r"\b(?:plus aucune|sans aucune) restriction|没有任何限制|\bkeine "
        r"(?:einschränkungen|regeln) mehr\b|\bsin (?:ninguna )?restricci[oó]n",
    ),
)

CUES: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (category, name, re.compile(pattern, re.IGNORECASE | re.MULTILINE))
    for category, name, pattern in _CUE_PATTERNS
)

#: Cues strong enough on their own to floor a score at the operating point: each was
#: checked against the dev set's benign prompts (benchmarks/guard_train.py reports the
#: floor's false-positive rate there).
FLOOR = frozenset(
    {
        "override_prior",
        "forged_system",
        "mode_claim",
        "addressed_to_ai",
        "refusal_suppression",
        "goal_hijack",
        "foreign_override",
        "reveal_instructions",
    }
)

# Quoted spans: straight or curly double quotes, guillemets, backticks, and single quotes
# that open after a non-letter (so "don't" and "it's" do not open a quote).
_QUOTED = re.compile(
    r"\"[^\"\n]{1,300}\"|“[^”\n]{1,300}”|«[^»\n]{1,300}»|`[^`\n]{1,300}`|"
    r"(?<!\w)'(?:[^'\n]|(?<=\w)'(?=\w)){1,300}'(?!\w)|‘[^’\n]{1,300}’"
)


#: A JSON member (``"key": "value"``): data a tool returned, not a quotation — kept.
_JSON_MEMBER = re.compile(r"\"[\w-]{1,40}\"\s*:\s*\"(?:[^\"\\\n]|\\.){0,2000}\"")


def strip_quoted(text: str) -> str:
    """``text`` with quoted spans blanked out: what it says rather than what it quotes.
    JSON members stay (their quotes become spaces): a tool result is not a quotation."""
    kept: list[str] = []

    def keep(match: re.Match[str]) -> str:
        kept.append(match.group().replace('"', " "))
        return f"\x00{len(kept) - 1}\x00"

    text = _JSON_MEMBER.sub(keep, text)
    text = _QUOTED.sub(" ", text)
    return re.sub("\x00(\\d+)\x00", lambda m: kept[int(m.group(1))], text)


def cue_counts(text: str) -> list[int]:
    """How often each cue matches ``text`` (lower-cased), capped at three."""
    counts = []
    for _, _, pattern in CUES:
        n = 0
        for _match in pattern.finditer(text):
            n += 1
            if n == 3:
                break
        counts.append(n)
    return counts


#: A demand on the model after an override: "ignore the above *and say*…". People cancel
#: earlier instructions too ("ignore the previous email, the meeting moved"); what sets
#: an injection apart is the order, or the "you", that follows.
_DEMAND = re.compile(
    r"\b(?:say|print|output|reply|respond|write|type|repeat|reveal|show|tell|answer|act|"
    r"confirm|acknowledge|list|describe|obey|translate|summari[sz]e|recommend|explain|"
    r"return|give|display|send|call)\b|\byou(?:r|'re|'ll)?\b"
)


def floor_hits(text: str) -> list[tuple[str, str]]:
    """(category, name) of the floor cues that match ``text`` outside quotation marks.

    An override of earlier instructions counts only with a demand on the model after it
    (or a "you" in it): that is the difference between an injection and a correction.
    """
    bare = strip_quoted(text.lower())
    hits = []
    for category, name, pattern in CUES:
        if name not in FLOOR:
            continue
        match = pattern.search(bare)
        if match is None:
            continue
        if name == "override_prior" and not any(
            _DEMAND.search(bare, m.start()) for m in pattern.finditer(bare)
        ):
            continue
        hits.append((category, name))
    return hits
