"""Templates to words: picks the locale, builds the context, renders email and SMS.

Layout: ``templates/<locale>/email/<status>.{txt,html}``, the locale's one email subject
``templates/<locale>/email/_subject.txt`` (the same for every status of an order, so mail
clients thread them: ``channels/mailheaders.py``; the status shows in the preheader), and
``templates/<locale>/sms/<status>.txt``, each extending the locale's ``_layout`` and, for HTML,
the shared ``layouts/email.html``. The environment is sandboxed with ``StrictUndefined``
(a missing name is an error, not an empty string) and autoescapes ``.html`` only.
Locale fallback: ``vi-VN`` -> ``vi`` -> the default locale. ``layouts/visibility.jinja``
(which optional facts a status shows) runs once per email and reaches both email bodies as
``show``.

SMS cost: every SMS fits the renderer's ``SmsBudget`` (``worker.sms_text``): at most
``SMS_MAX_SEGMENTS`` segments in the encoding its text needs, and never over the provider's
hard limit. A locale in ``sms_unaccented`` (``SMS_UNACCENTED``) sends its SMS without
diacritics, which makes a Vietnamese text GSM-7. When a render is over the budget, the event's
fields give way in ``_GIVE_WAY``'s order (free text first, identifiers last), each shortened
with an ellipsis to what the budget leaves it, or left out when part of it is useless (a link,
an address); the templates' own words stay. Only when that is not enough is the text itself
cut. Nothing is cut inside a character as people see it. ``RenderedSms`` carries the encoding
and segment count of what is sent (what the metrics count); ``sms_as_written`` renders without
the budget, for ``python -m worker check``.

Cost: a render is Jinja's generated code; around it, what ``Template.render`` and
``extends`` redo at every render is done once (see ``Renderer._prepared``): a template and
its chain of parents are resolved once per name, and their blocks stacked once, so a render
runs the root of the last parent directly. With the cheaper context (field dicts instead
of ``model_dump``, shared as is) and a cheaper ``_tidy`` this took an email from about 95 to
69 us and an SMS from 14.5 to 8.8 (min of interleaved runs on one machine).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_time
from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    nodes,
    select_autoescape,
)
from jinja2.environment import TemplateModule
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel

from worker import graphemes
from worker.events import Event, Shop
from worker.sms_text import Encoding, SmsBudget, ellipsis_for, measure, unaccented

VISIBILITY = "layouts/visibility.jinja"
# Contexts kept for an event's second channel. Its render comes when the loop reaches the task
# of that channel, after the other tasks ready by then: with 512 records in flight, 256 contexts
# (about 1 MB) cover nearly every email+SMS event.
RECENT_CONTEXTS = 256
DEFAULT_SMS_BUDGET = SmsBudget()
# the fields that give way, in order: (context section, key), and which are left out rather
# than shortened, since part of a link or an address is no use
_GIVE_WAY = (
    ("shipment", "detail"),
    ("shipment", "location"),
    ("shipment", "carrier"),
    ("shop", "name"),
    ("shipment", "tracking_number"),
    ("shipment", "tracking_url"),
    ("shop", "support_email"),
    ("shipment", "order_id"),
)
_LEFT_OUT = frozenset({"tracking_url", "support_email"})
_MIN_KEPT = 16  # what a shortened field keeps at least, in code units before its ellipsis


class RenderError(Exception):
    """A template is missing or failed to render: a bug in the templates, not in the event."""


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


@dataclass(frozen=True, slots=True)
class RenderedSms:
    text: str
    encoding: Encoding
    segments: int


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, serving the items of the context's plain dicts before trying attributes:
    ``shipment.carrier`` otherwise costs a failed attribute lookup first (an exception) on
    every read. Only a key named like a dict method would read differently, and the context
    has none. The names an imported template exports (``show.carrier`` of
    ``layouts/visibility.jinja``) are served directly too, which makes an email's render about
    15% cheaper. Everything else goes through the sandbox's checks."""

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as one plain dict instead of Jinja's ``ChainMap`` over the
        environment's: every render copies them into its context, and iterating a ChainMap
        was a tenth of a render. The environment's globals never change after start-up."""
        return {**self.globals, **(d or {})}

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        if type(obj) is TemplateModule and attribute in obj.__dict__ and attribute[0] != "_":
            return obj.__dict__[attribute]  # a name a template of ours exports
        return super().getattr(obj, attribute)


_Block = Callable[[Context], Iterator[str]]


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A template as ``Renderer._prepared`` resolved it: ``root`` renders it into a context
    of ``template`` whose blocks are ``blocks`` (``None``: the template's own, as Jinja makes
    them). Nothing changes the stacks in ``blocks`` during a render: only an ``extends``
    adds to them, and the roots that have one are the ones ``root`` skips."""

    template: Template
    root: _Block
    blocks: dict[str, list[_Block]] | None

    def render(self, context: dict[str, Any]) -> str:
        """``Template.render`` without its two copies of the context: ``shared=True`` uses
        ``context`` as the render's variables as it is, which is why ``Renderer._context``
        puts the globals in it (a template never writes to them: its names go to a layer
        above)."""
        ctx = self.template.new_context(context, shared=True)
        if self.blocks is not None:
            ctx.blocks = dict(self.blocks)
        env = self.template.environment
        try:
            return env.concat(self.root(ctx))
        except Exception:
            env.handle_exception()  # as Template.render: template lines in the traceback


def _stacked(template: Template, above: dict[str, list[_Block]]) -> dict[str, list[_Block]]:
    """Each block's definitions, ``template``'s first, then those of the templates it
    extends (``above``): the stacks a render of ``template`` builds in its context."""
    blocks = {name: [block] for name, block in template.blocks.items()}
    for name, stack in above.items():
        blocks.setdefault(name, []).extend(stack)
    return blocks


def _extended(tree: nodes.Template) -> str | None:
    """The name a template extends if that and defining blocks is all its top level does."""
    if not tree.body or not isinstance(tree.body[0], nodes.Extends):
        return None
    parent = tree.body[0].template
    if not isinstance(parent, nodes.Const) or not isinstance(parent.value, str):
        return None
    if all(isinstance(node, nodes.Block | nodes.Output) for node in tree.body[1:]):
        return parent.value
    return None


def _parse(env: Environment, name: str, filename: str | None) -> nodes.Template:
    """The syntax tree of a template ``env`` has loaded (its loader read the file again)."""
    if env.loader is None:
        raise TemplateError(f"{name}: no loader")
    source, _, _ = env.loader.get_source(env, name)
    return env.parse(source, name, filename)


class Renderer:
    def __init__(
        self,
        templates_dir: Path,
        default_locale: str,
        default_shop: Shop,
        *,
        sms_budget: SmsBudget = DEFAULT_SMS_BUDGET,
        sms_unaccented: frozenset[str] = frozenset(),
    ) -> None:
        self.sms_budget = sms_budget
        self._env = _Environment(
            loader=FileSystemLoader(templates_dir),
            undefined=StrictUndefined,
            autoescape=select_autoescape(
                enabled_extensions=("html",), default_for_string=False, default=False
            ),
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
            # a plain dict: Jinja's LRU cache removes the name from a deque on every hit (a
            # linear scan over the ~200 templates, several per email for the layouts), and
            # templates never change while the worker runs
            cache_size=-1,
        )
        if not templates_dir.is_dir():
            raise RenderError(f"TEMPLATES_DIR {templates_dir} is not a directory")
        self.locales = frozenset(
            p.name for p in templates_dir.iterdir() if p.is_dir() and (p / "email").is_dir()
        )
        if default_locale not in self.locales:
            raise RenderError(
                f"DEFAULT_LOCALE {default_locale!r} has no templates in {templates_dir}"
                f" (have: {', '.join(sorted(self.locales))})"
            )
        self.default_locale = default_locale
        unknown = sorted(sms_unaccented - self.locales)
        if unknown:
            raise RenderError(
                f"SMS_UNACCENTED {', '.join(unknown)}: no templates in {templates_dir}"
                f" (have: {', '.join(sorted(self.locales))})"
            )
        self.sms_unaccented = sms_unaccented
        self._default_shop = default_shop
        # the contexts of the last events rendered, by id: an event's email and SMS are
        # composed in two tasks, with other events' renders in between
        self._recent: dict[int, tuple[Event, str, dict[str, Any]]] = {}
        self._templates: dict[str, _Prepared] = {}

    def locale_for(self, requested: str | None) -> str:
        """The template locale for a customer's BCP 47 tag."""
        if requested:
            tag = requested.replace("_", "-")
            for candidate in (tag, tag.split("-")[0]):
                if candidate.lower() in self.locales:
                    return candidate.lower()
        return self.default_locale

    def email(self, event: Event) -> RenderedEmail:
        locale, context = self._context(event)
        try:  # once for both bodies: importing it in each layout made it twice per email
            show = self._prepared(VISIBILITY).template.make_module(context, shared=True)
        except TemplateError as exc:
            raise RenderError(f"{VISIBILITY}: {exc}") from exc
        context = {**context, "show": show}
        base = f"{locale}/email/{event.status}"
        return RenderedEmail(
            subject=_one_line(self._render(f"{locale}/email/_subject.txt", context)),
            text=_tidy(self._render(f"{base}.txt", context)) + "\n",
            html=self._render(f"{base}.html", context),
        )

    def sms(self, event: Event) -> RenderedSms:
        """The event's SMS within the budget."""
        locale, context = self._context(event)
        name = f"{locale}/sms/{event.status}.txt"
        text = self._sms_text(locale, name, context)
        cost = measure(text)
        if not self.sms_budget.fits(cost, text):
            text = self._shortened_sms(locale, name, context, text)
            cost = measure(text)
        return RenderedSms(text, cost.encoding, cost.segments)

    def sms_as_written(self, event: Event) -> RenderedSms:
        """The event's SMS with every field whole, whatever it costs."""
        locale, context = self._context(event)
        text = self._sms_text(locale, f"{locale}/sms/{event.status}.txt", context)
        cost = measure(text)
        return RenderedSms(text, cost.encoding, cost.segments)

    def _sms_text(self, locale: str, name: str, context: dict[str, Any]) -> str:
        text = _tidy(self._render(name, context))
        return unaccented(text) if locale in self.sms_unaccented else text

    def _shortened_sms(self, locale: str, name: str, context: dict[str, Any], text: str) -> str:
        """``text`` within the budget: the fields give way in turn, in copies of the context
        (the event's other channel shares it), until the render fits. A field is shortened
        again while the render is still over (a segment's last unit may stay empty) and it can
        keep ``_MIN_KEPT``. Leaving a field out makes room for those shortened before it: they
        start again from their whole values."""
        budget, ellipsis = self.sms_budget, ellipsis_for(text)
        whole = shortened = context
        cost = measure(text)
        position = 0
        while position < len(_GIVE_WAY) and not budget.fits(cost, text):
            section, key = _GIVE_WAY[position]
            value = shortened[section][key]
            if key in _LEFT_OUT and value:
                whole = shortened = _replaced(whole, section, key, None)
                position = 0
            else:
                short = value and _shortened(value, budget.excess(cost, text), ellipsis)
                if short == value:
                    position += 1
                    continue
                shortened = _replaced(shortened, section, key, short)
            text = self._sms_text(locale, name, shortened)
            cost = measure(text)
        return text if budget.fits(cost, text) else _cut_to(budget, text, ellipsis)

    def _render(self, name: str, context: dict[str, Any]) -> str:
        try:
            return self._prepared(name).render(context)
        except TemplateError as exc:
            raise RenderError(f"{name}: {exc}") from exc

    def _prepared(self, name: str) -> _Prepared:
        """One dict lookup per render instead of ``get_template``'s name joining, weak
        reference and cache key, for the template and each parent (templates never change
        while the worker runs)."""
        prepared = self._templates.get(name)
        if prepared is None:
            template = self._env.get_template(name)
            # rendered as Jinja does until _flatten says otherwise: a loop of extends finds
            # this, and so does every render after _flatten failed (on a missing parent)
            prepared = _Prepared(template, template.root_render_func, None)
            self._templates[name] = prepared
            prepared = self._templates[name] = self._flatten(name, template) or prepared
        return prepared

    def _flatten(self, name: str, template: Template) -> _Prepared | None:
        """``template`` ready to render without running the roots of the templates it
        extends, when each of them does nothing at its top level but extend its parent and
        define blocks (as ours do): a render is then the root of the last one, run over all
        their blocks stacked as Jinja stacks them. That skips what each child's root does at
        every render (fetch the parent, stack its ~20 blocks) and one generator level per
        parent for each of the ~120 pieces of an HTML body: a sixth of its render. None: not
        such a template, rendered from its own root."""
        tree = _parse(self._env, name, template.filename)
        parent = _extended(tree)
        if parent is None:  # the end of a chain, if it extends nothing (not even maybe)
            if tree.find(nodes.Extends) is not None:
                return None
            return _Prepared(template, template.root_render_func, _stacked(template, {}))
        above = self._prepared(self._env.join_path(parent, name))
        if above.blocks is None:
            return None
        return _Prepared(template, above.root, _stacked(template, above.blocks))

    def _context(self, event: Event) -> tuple[str, dict[str, Any]]:
        """The names templates see (never changed after it is made: renders share it)."""
        recent = self._recent.get(id(event))
        if recent is not None and recent[0] is event:
            return recent[1], recent[2]
        locale = self.locale_for(event.customer.locale)
        formats = _babel_locale(event.customer.locale, locale)
        shop = event.shop
        eta = event.shipment.estimated_delivery
        context = {
            **self._env.globals,  # what Template.render would add (see _Prepared.render)
            "locale": locale,
            "status": event.status,
            "event_id": event.event_id,
            # plain dicts: the sandbox checks every attribute read on an object (a third of
            # the render time) but serves dict items directly
            "shipment": _fields(event.shipment),
            "customer": _fields(event.customer),
            "shop": {
                "name": shop.name or self._default_shop.name,
                "url": shop.url or self._default_shop.url,
                "support_email": shop.support_email or self._default_shop.support_email,
            },
            "eta": _format_day(eta, formats) if eta else None,
            "occurred_at": _format_moment(event.occurred_at, formats),
        }
        if len(self._recent) >= RECENT_CONTEXTS:
            del self._recent[next(iter(self._recent))]  # the oldest
        self._recent[id(event)] = (event, locale, context)
        return locale, context


def _fields(model: BaseModel) -> dict[str, Any]:
    """A flat model's fields as a new dict: what ``model_dump()`` returns for a model without
    nested models (``Shipment``, ``Customer``), at a fifth of its cost."""
    return dict(model.__dict__)


@functools.lru_cache(maxsize=256)
def _babel_locale(requested: str | None, template_locale: str) -> Locale:
    """Dates follow the customer's full tag when it is in the template's language (en-US and
    en-GB differ); otherwise the template's language, so the words around a date match it."""
    fallback = Locale.parse(template_locale)
    if requested:
        try:
            customer = Locale.parse(requested.replace("-", "_"))
        except (ValueError, UnknownLocaleError):
            return fallback
        if customer.language == fallback.language:
            return customer
    return fallback


# Babel's CLDR patterns, except where people write dates differently in messages:
# Vietnamese "Thứ Hai, ngày 23 tháng 11 năm 2026"
_DAY = {"vi": "EEEE, 'ngày' d 'tháng' M 'năm' y"}
# an event's time: (day pattern, joiner, clock pattern, clock first): "November 21, 2026 at
# 6:15 PM", "21. November 2026, 18:15", "2026년 11월 21일 18:15", "08:15 ngày 21/11/2026"
_MOMENT = {
    "en": ("long", " at ", "h:mm a", False),
    "ko": ("long", " ", "HH:mm", False),
    "vi": ("dd/MM/y", " ngày ", "HH:mm", True),
}
_DEFAULT_MOMENT = ("long", ", ", "HH:mm", False)


def _format_day(day: date, locale: Locale) -> str:
    return _formatted_day(day, _DAY.get(locale.language, "full"), locale)


def _format_moment(at: datetime, locale: Locale) -> str:
    """The producer's local time of an event, as people of ``locale`` write it."""
    day_pattern, joiner, clock_pattern, clock_first = _MOMENT.get(locale.language, _DEFAULT_MOMENT)
    day = _formatted_day(at.date(), day_pattern, locale)
    clock = _formatted_clock(at.hour, at.minute, clock_pattern, locale)
    return f"{clock}{joiner}{day}" if clock_first else f"{day}{joiner}{clock}"


# Babel takes about 4 us a date or time; events name few distinct days and minutes, so each
# is formatted once. The clock patterns above use only the hour and minute.
@functools.lru_cache(maxsize=4096)
def _formatted_day(day: date, pattern: str, locale: Locale) -> str:
    return format_date(day, pattern, locale=locale)


@functools.lru_cache(maxsize=4096)
def _formatted_clock(hour: int, minute: int, pattern: str, locale: Locale) -> str:
    return format_time(time(hour, minute), pattern, locale=locale)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _tidy(text: str) -> str:
    """Trailing spaces off, runs of blank lines folded to one, ends trimmed. Folding by
    ``replace`` only when there is a run: a regex scan for ``\\n{3,}`` took 4 us of an
    email's 6 us in here, on texts that mostly have no run at all."""
    tidy = "\n".join([line.rstrip() for line in text.strip().splitlines()])
    while "\n\n\n" in tidy:
        tidy = tidy.replace("\n\n\n", "\n\n")
    return tidy


def _replaced(context: dict[str, Any], section: str, key: str, value: str | None) -> dict[str, Any]:
    return {**context, section: {**context[section], key: value}}


def _shortened(value: str, over: int, ellipsis: str) -> str:
    """``value`` shorter by at least ``over`` units if it can keep ``_MIN_KEPT``, ending at a
    word's end when one is near, then the ellipsis."""
    length = graphemes.utf16_length(value)
    keep = max(_MIN_KEPT, length - over - len(ellipsis))
    if keep + len(ellipsis) >= length:
        return value
    kept = graphemes.cut(value, keep)
    if len(kept) < len(value) and not value[len(kept)].isspace():
        space = kept.rfind(" ", max(0, len(kept) - _MIN_KEPT))
        kept = kept[:space] if space > 0 else kept
    return kept.rstrip() + ellipsis


def _cut_to(budget: SmsBudget, text: str, ellipsis: str) -> str:
    """The last resort: the start of ``text`` that fits ``budget`` with the ellipsis."""
    units = min(budget.capacity(measure(text).encoding), budget.length) - len(ellipsis)
    while True:
        short = graphemes.cut(text, units).rstrip().removesuffix(ellipsis) + ellipsis
        cost = measure(short)
        if budget.fits(cost, short) or units <= 0:
            return short
        units -= budget.excess(cost, short)
