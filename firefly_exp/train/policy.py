"""Policies: a Hugging Face causal LM + tokenizer, and multi-turn rollouts of it inside the simulator.

``build_policy`` makes one from a ``conf/train/policy/`` entry:

- ``kind: tiny`` (the CPU default): a small Llama-architecture transformer initialised from the seed,
  and a BPE tokenizer trained here on the train tasks and the tool schemas (nothing downloaded). Its
  pre-tokenizer keeps a quoted string whole, so an argument or a value is copied as the same few tokens
  wherever it appears (question, call, tool response, answer).
- ``kind: hf``: any Hugging Face causal LM, ``name_or_path`` a local folder or a hub id (e.g. Qwen/Qwen3-4B),
  with its own tokenizer and chat template.

``LMPolicy.play`` runs a batch of episodes turn by turn: generate an assistant turn, parse its ``<tool_call>``,
call the simulator through :class:`~firefly_exp.simulator.env.ToolEnvironment`, append the
``<tool_response>`` as tokens the model did not produce (mask 0), until the policy answers or the turn
budget ends.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..simulator import Episode, Simulator
from ..simulator.env import ToolEnvironment
from . import chat

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKUP = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<tools>", "</tools>"]
# a quoted string, one structural character, a word (with its leading space), a run of spaces
PRETOKEN = r'"[^"\n]{0,160}"|[{}\[\]:,=.()\n]| ?[^\s{}\[\]:,=."()]+|\s+'
# Qwen/Hermes layout; the tools are listed as JSON, one per line, inside <tools></tools> (a bare name when
# the prompt carries names only)
TINY_TEMPLATE = (
    "{% if messages[0].role == 'system' %}{% set sys = messages[0].content %}{% set rest = messages[1:] %}"
    "{% else %}{% set sys = '' %}{% set rest = messages %}{% endif %}"
    "<|im_start|>system\n{{ sys }}"
    "{% if tools %}\n<tools>\n{% for t in tools %}{% set f = t.function if t.function is defined else t %}"
    "{{ (f if f.parameters is defined else f.name) | tojson }}\n{% endfor %}</tools>{% endif %}<|im_end|>\n"
    "{% for m in rest %}"
    "{% if m.role == 'user' %}<|im_start|>user\n{{ m.content }}<|im_end|>\n"
    "{% elif m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n{{ {'name': c.function.name, 'arguments': c.function.arguments}"
    " | tojson }}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class PolicySettings:
    """How the policy is prompted and how long it may talk (from ``conf/train/policy/``; the defaults are
    those of ``settings.PolicySettingsModel``: build one with :func:`settings_from`)."""
    tools_in_prompt: str                  # schemas | names
    max_turns: int                        # assistant turns per episode (tool calls + the answer)
    max_new_tokens: int                   # per assistant turn
    max_response_chars: int               # a tool response is cut to this many characters
    max_seq_len: int                      # an episode stops when its tokens reach this
    chat_template_kwargs: dict = field(default_factory=dict)   # e.g. {enable_thinking: false} for Qwen3


@dataclass(frozen=True)
class ToolCatalog:
    """The tools as a prompt lists them: input schemas and descriptions by tool id (``server/tool``)."""
    schemas: dict[str, dict]
    descriptions: dict[str, str] = field(default_factory=dict)

    def functions(self, task: dict, mode: str) -> list[dict]:
        """The task's offered tools in OpenAI function format (``mode``: ``schemas`` or ``names``)."""
        return chat.tool_functions(task, self.schemas, mode, self.descriptions)


def train_tokenizer(texts: list[str], vocab_size: int):
    """A BPE tokenizer trained on ``texts`` with the Qwen-style chat markup as tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKEN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    # the markup is not "special": decoding with skip_special_tokens (TRL's completions) keeps it, as Qwen's does
    tok.add_tokens([AddedToken(m, special=False, normalized=False) for m in MARKUP])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = TINY_TEMPLATE
    return fast


def tokenizer_corpus(tasks: list[dict], functions: list[dict], max_response_chars: int) -> list[str]:
    """The texts the tiny tokenizer learns from: the train tasks' conversations and the tool schemas."""
    texts = [json.dumps(f, ensure_ascii=False) for f in functions]
    for t in tasks:
        texts.append(chat.SYSTEM + "\n" + t["question"])
        texts.extend(text for text, _ in chat.gold_turns(t, max_response_chars))
    return texts


def build_policy(spec: dict, seed: int, corpus: list[str]):
    """(model, tokenizer) for a ``conf/train/policy/`` entry."""
    import transformers

    set_threads(spec)
    torch.manual_seed(seed)
    if spec["kind"] == "tiny":
        tok = train_tokenizer(corpus, int(spec["vocab_size"]))
        cfg = transformers.LlamaConfig(
            vocab_size=len(tok), hidden_size=spec["hidden_size"], intermediate_size=spec["intermediate_size"],
            num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"], num_key_value_heads=spec["heads"],
            max_position_embeddings=spec["max_seq_len"], tie_word_embeddings=True,
            bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"), eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id)
        model = transformers.LlamaForCausalLM(cfg)
    elif spec["kind"] == "hf":
        tok = transformers.AutoTokenizer.from_pretrained(spec["name_or_path"])
        model = transformers.AutoModelForCausalLM.from_pretrained(
            spec["name_or_path"], dtype=getattr(torch, spec.get("dtype", "float32")),
            attn_implementation=spec.get("attn_implementation") or None)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        raise ValueError(f"train.policy.kind={spec['kind']!r}: use tiny or hf")
    tok.padding_side = "left"
    return model.to(spec["device"]), tok


def set_threads(spec: dict) -> None:
    """``threads`` in a CPU policy's config caps torch's intra-op threads: small models on a shared machine run
    many times faster on one thread than fighting over several."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))


def load_policy(folder: Path, device: str = "cpu"):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).to(device)
    return model.eval(), tok


def prompt_ids(tok, task: dict, functions: list[dict], settings: PolicySettings) -> list[int]:
    ids = tok.apply_chat_template(chat.prompt_messages(task), tools=functions, add_generation_prompt=True,
                                  tokenize=True, **settings.chat_template_kwargs)
    if isinstance(ids, dict) or hasattr(ids, "keys"):   # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@dataclass
class Rollout:
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)      # 1: generated by the policy, 0: tool responses
    text: str = ""                                            # the completion, decoded
    answer: dict | None = None
    tool_responses: list[str] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)          # as the simulator saw them (tool, hit, is_error)
    malformed: int = 0                                        # turns whose <tool_call> did not parse
    done: bool = False


class LMPolicy:
    """A causal LM playing episodes in the simulator: an evaluation policy (``evaluate.evaluate``'s
    ``policy(task, episode, rng)``), and the sampler of GRPO's episodes and of the curve's points."""

    def __init__(self, model, tok, simulator: Simulator, catalog: ToolCatalog, settings: PolicySettings,
                 temperature: float = 0.0):
        self.model, self.tok, self.sim, self.catalog = model, tok, simulator, catalog
        self.settings, self.temperature = settings, temperature

    def __call__(self, task: dict, episode: Episode, rng: random.Random) -> dict:
        return self.batch([task], [episode], [rng])[0]

    def batch(self, tasks: list[dict], episodes: list[Episode], rngs: list[random.Random],
              batch_size: int = 32) -> list[dict]:
        """Answers for many tasks at once, ``batch_size`` episodes per batched generation."""
        answers: list[dict] = []
        for b in range(0, len(tasks), batch_size):
            part = tasks[b:b + batch_size]
            envs = self.envs(part)
            for env, episode in zip(envs, episodes[b:b + batch_size]):
                env.episode = episode      # the evaluator's episode: its calls are what gets scored
            torch.manual_seed(rngs[b].randrange(2 ** 31))
            answers += [o.answer or {} for o in self.play(part, envs)]
        return answers

    def envs(self, tasks: list[dict]) -> list[ToolEnvironment]:
        """A simulator environment per task, reset for the task's offered tools."""
        envs = []
        for task in tasks:
            env = ToolEnvironment(self.sim, max_calls=self.settings.max_turns)
            env.reset(tools=task["tools"])
            envs.append(env)
        return envs

    @torch.no_grad()
    def play(self, tasks: list[dict], envs: list[ToolEnvironment]) -> list[Rollout]:
        """One episode per task, batched turn by turn; ``envs[i]`` must be reset for ``tasks[i]``."""
        model, tok, settings = self.model, self.tok, self.settings
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        outs = [Rollout(prompt_ids(tok, t, self.catalog.functions(t, settings.tools_in_prompt), settings))
                for t in tasks]
        was_training = model.training
        model.eval()
        for _turn in range(settings.max_turns):
            active = [i for i, r in enumerate(outs) if not r.done]
            if not active:
                break
            for i, new in zip(active, self._generate([outs[i] for i in active], im_end)):
                self._take_turn(outs[i], envs[i], new, im_end)
        for r in outs:
            r.text = tok.decode(r.completion_ids, skip_special_tokens=False)
        model.train(was_training)
        return outs

    def _generate(self, outs: list[Rollout], im_end: int) -> list[list[int]]:
        """The next assistant turn of each episode (left-padded batch), cut after its ``<|im_end|>``."""
        tok, temperature = self.tok, self.temperature
        device = next(self.model.parameters()).device
        seqs = [r.prompt_ids + r.completion_ids for r in outs]
        width = max(map(len, seqs))
        input_ids = torch.tensor([[tok.pad_token_id] * (width - len(s)) + s for s in seqs], device=device)
        attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
        gen = self.model.generate(
            input_ids=input_ids, attention_mask=attention, max_new_tokens=self.settings.max_new_tokens,
            do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
            top_k=0 if temperature > 0 else None, top_p=1.0 if temperature > 0 else None,
            eos_token_id=im_end, pad_token_id=tok.pad_token_id)
        news = []
        for row in range(len(outs)):
            new = gen[row, width:].tolist()
            news.append(new[:new.index(im_end) + 1] if im_end in new else new)
        return news

    def _take_turn(self, r: Rollout, env: ToolEnvironment, new: list[int], im_end: int) -> None:
        """Append a generated turn to ``r``; a tool call goes to the simulator and its response is appended
        as tokens the policy did not produce (mask 0). An answer, or a turn cut off mid-way, ends it."""
        r.completion_ids += new
        r.env_mask += [1] * len(new)
        text = self.tok.decode(new, skip_special_tokens=False).replace("<|im_end|>", "")
        call = chat.parse_tool_call(text)
        if call is None or im_end not in new:       # an answer, or a turn cut off mid-way
            r.answer = chat.final_answer(text) if call is None else None
            r.done = True
            return
        name, args = call
        if name == "":
            r.malformed += 1
            response = "ERROR: " + str(args)
        else:
            result = env.step(name, args)
            response = chat.tool_response_text(result, self.settings.max_response_chars)
            r.calls.append({"tool": name, "hit": result["hit"], "is_error": result["is_error"]})
        r.tool_responses.append(response)
        suffix = encode(self.tok, chat.tool_turn_text(response))
        r.completion_ids += suffix
        r.env_mask += [0] * len(suffix)
        if len(r.prompt_ids) + len(r.completion_ids) >= self.settings.max_seq_len:
            r.done = True


def settings_from(spec: dict) -> PolicySettings:
    """The prompting and length settings of a policy config (``settings.policy.plain()``, every field set)."""
    return PolicySettings(**{k: v for k, v in spec.items() if k in PolicySettings.__dataclass_fields__})


def parameters_delta(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The L2 norm of the difference between two state dicts."""
    return float(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a if k in b) ** 0.5)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
