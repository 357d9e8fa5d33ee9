"""`--against openai:URL`: a server with an OpenAI-compatible API (vLLM, TGI, llama.cpp, ...).

URL is the server (`http://host:8000`, `.../v1`) or one endpoint: `.../v1/chat/completions`
(the default; the image goes as an `image_url` content part holding a PNG data URL) or
`.../v1/completions` (the prompt as text; that API has no image field, so the same data URL
is sent as a top-level `image_url`, which servers without it ignore). `?model=NAME` picks
the served model (else the first of `/v1/models`). OPENAI_API_KEY, if set, is sent as a
bearer token. The request asks for greedy decoding (temperature 0) with the top logprobs of
each new token; the returned token strings are mapped to ids with the checkpoint's tokenizer
("token_id:N" strings, as vLLM's --return-tokens-as-token-ids gives, are taken as they are).
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request

from ...errors import InputError

TOP_LOGPROBS = 5     # the chat API allows up to 20
TIMEOUT_S = 600


def endpoint(url: str) -> tuple[str, str, str | None]:
    """(server base, "chat" or "completions", model from ?model=) of an openai:URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"--against openai:{url}: expected openai:http://HOST:PORT[/v1[/chat]"
                         "/completions][?model=NAME]")
    model = urllib.parse.parse_qs(parts.query).get("model", [None])[0]
    path = parts.path.rstrip("/")
    kind = "chat"
    for suffix, k in (("/chat/completions", "chat"), ("/completions", "completions")):
        if path.endswith(suffix):
            path, kind = path[: -len(suffix)], k
            break
    if path.endswith("/v1"):
        path = path[:-3]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", "")), kind, model


def _tokens_only(kind: str, choice: dict, tokenizer, max_new_tokens: int) -> dict:
    """A response without logprobs (transformers serve gives none): its text, tokenized with
    the checkpoint's tokenizer, is judged alone — npgemma's logits teacher-forced along those
    tokens, each one npgemma's greedy pick or a near-tie within the logits tolerance."""
    import sys

    text = (choice.get("message") or {}).get("content") if kind == "chat" else choice.get("text")
    if text is None:
        raise InputError("--against openai: the response has neither logprobs nor text")
    print("npgemma: note: the server returned no logprobs; judging its greedy tokens alone "
          "(npgemma's logits teacher-forced along them, near-ties allowed)", file=sys.stderr)
    return {"token_ids": tokenizer.encode(text, add_special_tokens=False).ids[:max_new_tokens]}


CHAT_TEMPLATE = ("{% for message in messages %}{% for part in message['content'] %}"
                 "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
                 "{% endfor %}")


def has_chat_template(model_dir) -> bool:
    """Does the checkpoint carry a chat template (where transformers looks for one)?"""
    folder = os.fspath(model_dir)
    if any(os.path.isfile(os.path.join(folder, f))
           for f in ("chat_template.jinja", "chat_template.json")):
        return True
    for name in ("tokenizer_config.json", "processor_config.json"):
        try:
            with open(os.path.join(folder, name)) as f:
                if json.load(f).get("chat_template"):
                    return True
        except (OSError, ValueError):
            continue
    return False


def _request(url: str, body: dict | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:300]
        raise InputError(f"--against openai: {url}: HTTP {e.code} {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise InputError(f"--against openai: {url}: {e}") from None


def data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def token_id(text: str, raw: list | None, tokenizer) -> int | None:
    """A returned token string (and its UTF-8 `bytes`, when given) -> the checkpoint's id."""
    if text.startswith("token_id:") and text[9:].isdigit():
        return int(text[9:])
    for piece in (text, text.replace(" ", "\u2581")):
        i = tokenizer.token_to_id(piece)
        if i is not None:
            return i
    if raw is not None and len(raw) == 1:  # a lone byte: the byte-fallback token
        i = tokenizer.token_to_id(f"<0x{raw[0]:02X}>")
        if i is not None:
            return i
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    return ids[0] if len(ids) == 1 else None


def _steps(kind: str, choice: dict) -> list[tuple[str, list | None, list[tuple[str, list | None, float]]]]:
    """[(chosen token, its bytes, [(candidate, bytes, logprob)])] from either response shape."""
    lp = choice.get("logprobs")
    if kind == "chat":
        return [(s["token"], s.get("bytes"),
                 [(t["token"], t.get("bytes"), t["logprob"]) for t in s.get("top_logprobs") or []]
                 or [(s["token"], s.get("bytes"), s["logprob"])]) for s in lp["content"]]
    tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
    return [(tok, None, [(k, None, v) for k, v in (top or {tok: chosen}).items()])
            for tok, chosen, top in zip(lp["tokens"], lp["token_logprobs"], tops)]


def openai_adapter(model_dir, image, prompt, *, url: str, max_new_tokens: int = 8) -> dict:
    from ...checkpoint.config_json import load_config
    from ...generation.processing import Processor

    base, kind, model = endpoint(url)
    if model is None:
        listed = _request(base + "/v1/models").get("data") or []
        model = listed[0]["id"] if listed else os.path.basename(os.path.normpath(model_dir))
    body = {"model": model, "max_tokens": max_new_tokens, "temperature": 0}
    if kind == "chat":
        body |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS, "messages": [{
            "role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                        {"type": "text", "text": prompt}]}]}
        path = "/v1/chat/completions"
    else:
        body |= {"prompt": prompt, "logprobs": TOP_LOGPROBS,
                 "image_url": {"url": data_url(image)}}
        path = "/v1/completions"
    try:
        choices = _request(base + path, body).get("choices") or []
    except InputError as e:
        if kind == "chat" and "HTTP 500" in str(e) and not has_chat_template(model_dir):
            raise InputError(
                f"{e} — {model_dir} has no chat template, and a server that applies one (transformers "
                "serve: \"Cannot use apply_chat_template because this processor does not have a "
                "chat template\") cannot answer the chat API; PaliGemma checkpoints carry none. "
                f"Fix: write the text parts of the message as its template, in the folder the "
                f"server loads, and restart it: printf '%s' \"{CHAT_TEMPLATE}\" > "
                f"{os.path.join(os.fspath(model_dir), 'chat_template.jinja')}") from None
        raise
    if not choices:
        raise InputError(f"--against openai: {base + path} returned no choices")
    tokenizer = Processor.from_pretrained(model_dir, load_config(model_dir)).tokenizer
    if not choices[0].get("logprobs"):
        return _tokens_only(kind, choices[0], tokenizer, max_new_tokens)
    tokens, tops, unmapped = [], [], []
    for chosen, raw, candidates in _steps(kind, choices[0]):
        i = token_id(chosen, raw, tokenizer)
        if i is None:
            raise InputError(f"--against openai: generated token {chosen!r} is not one token of "
                             f"{model_dir}'s tokenizer (is the server running this checkpoint?)")
        tokens.append(i)
        step = {}
        for text, b, value in candidates:
            j = token_id(text, b, tokenizer)
            if j is None:
                unmapped.append(text)
            else:
                step[j] = float(value)
        tops.append(step)
    if unmapped:  # cannot be compared; say so rather than drop them silently
        import sys
        print(f"npgemma: note: {len(unmapped)} top-logprob token strings are not one token of "
              f"the checkpoint's tokenizer (e.g. {unmapped[0]!r}); skipped", file=sys.stderr)
    return {"token_ids": tokens, "top_logprobs": tops}
