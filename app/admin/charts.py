"""Pictures drawn server-side as SVG: events per minute, and a conference's timeline.

Every text that comes from data is escaped. Colours come from classes in admin.css, never
from inline styles, so the page's Content-Security-Policy can forbid them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from markupsafe import Markup, escape

from app.models import Conference, utcnow
from app.queries import MemberHistory, Minute


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def per_minute_chart(minutes: list[Minute], width: int = 720, height: int = 140) -> Markup:
    """Bars of events per minute; the part that came through the fallback URL stands out."""
    top, bottom, left = 16, 22, 36
    plot_h, plot_w = height - top - bottom, width - left - 8
    peak = max([m.total for m in minutes] + [1])
    bar_w = plot_w / max(len(minutes), 1)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Events received per minute, last {len(minutes)} minutes">',
             f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{width - 8}" '
             f'y2="{top + plot_h}"/>',
             f'<text class="label" x="{left - 4}" y="{top + 4}" text-anchor="end">{peak}</text>',
             f'<text class="label" x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>']
    for i, minute in enumerate(minutes):
        x = left + i * bar_w
        h = plot_h * minute.total / peak
        fb = plot_h * minute.fallbacks / peak
        stamp = minute.start.strftime("%H:%M")
        parts.append(f'<g><title>{stamp} UTC: {minute.total} events, {minute.fallbacks} '
                     f'through the fallback URL</title>'
                     f'<rect class="bar" x="{_fmt(x + 1)}" y="{_fmt(top + plot_h - h)}" '
                     f'width="{_fmt(max(bar_w - 2, 1))}" height="{_fmt(h)}"/>')
        if fb:
            parts.append(f'<rect class="bar-fallback" x="{_fmt(x + 1)}" '
                         f'y="{_fmt(top + plot_h - fb)}" width="{_fmt(max(bar_w - 2, 1))}" '
                         f'height="{_fmt(fb)}"/>')
        parts.append("</g>")
    if minutes:
        parts.append(f'<text class="label" x="{left}" y="{height - 6}">'
                     f'{minutes[0].start.strftime("%H:%M")}</text>')
        parts.append(f'<text class="label" x="{width - 8}" y="{height - 6}" text-anchor="end">'
                     f'{minutes[-1].start.strftime("%H:%M")} UTC</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass(frozen=True)
class Media:
    kind: str
    status: str | None
    at: datetime


def timeline(conference: Conference, histories: list[MemberHistory], media: list[Media],
             width: int = 900) -> Markup:
    """One lane per member from join to leave, with marks for mute, hold and media."""
    lane_h, top, left, right = 26, 34, 150, 16
    times: list[datetime] = [t for t in (conference.created_time, conference.completed_time,
                                         conference.last_event_at) if t]
    for history in histories:
        times.extend(t for t in (history.member.joined_at, history.member.left_at) if t)
    times.extend(m.at for m in media)
    if not times:
        return Markup('<p class="muted">No events yet: the timeline appears with the first '
                      'member.</p>')
    start = min(times)
    end = max(times + ([utcnow()] if conference.state in ("created", "active") else []))
    span = max((end - start).total_seconds(), 1.0)
    plot_w = width - left - right
    lanes = len(histories) + 1
    height = top + lanes * lane_h + 24

    def x(at: datetime) -> float:
        return left + plot_w * (at - start).total_seconds() / span

    parts = [f'<svg class="timeline" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Timeline of conference {escape(conference.id)}">']
    if conference.created_time:
        cx = x(conference.created_time)
        parts.append(f'<g><title>created {conference.created_time:%H:%M:%S} UTC</title>'
                     f'<line class="mark-created" x1="{_fmt(cx)}" y1="{top - 18}" '
                     f'x2="{_fmt(cx)}" y2="{height - 20}"/>'
                     f'<text class="label" x="{_fmt(cx + 3)}" y="{top - 8}">created</text></g>')
    if conference.completed_time:
        cx = x(conference.completed_time)
        parts.append(f'<g><title>completed {conference.completed_time:%H:%M:%S} UTC</title>'
                     f'<line class="mark-completed" x1="{_fmt(cx)}" y1="{top - 18}" '
                     f'x2="{_fmt(cx)}" y2="{height - 20}"/>'
                     f'<text class="label" x="{_fmt(cx - 3)}" y="{top - 8}" '
                     f'text-anchor="end">completed</text></g>')
    # The first lane: the conference's own audio.
    y = top
    parts.append(f'<text class="lane-label" x="{left - 8}" y="{y + 16}" '
                 f'text-anchor="end">audio</text>')
    for item in media:
        cls = "mark-playback" if item.kind == "conference-playback" else "mark-speak"
        what = "playback" if item.kind == "conference-playback" else "speak"
        parts.append(f'<g><title>{what} {escape(item.status or "")} {item.at:%H:%M:%S} UTC'
                     f'</title><circle class="{cls}" cx="{_fmt(x(item.at))}" cy="{y + 12}" '
                     f'r="5"/></g>')
    for history in histories:
        y += lane_h
        member = history.member
        label = member.member_id if len(member.member_id) <= 18 else \
            member.member_id[:8] + "…" + member.member_id[-8:]
        parts.append(f'<g class="lane" data-member="{escape(member.member_id)}">'
                     f'<text class="lane-label" x="{left - 8}" y="{y + 16}" '
                     f'text-anchor="end">{escape(label)}</text>')
        joined = member.joined_at or start
        left_at = member.left_at or (end if member.state == "active" else joined)
        parts.append(f'<rect class="lane-bar {"active" if member.state == "active" else ""}" '
                     f'x="{_fmt(x(joined))}" y="{y + 4}" '
                     f'width="{_fmt(max(x(left_at) - x(joined), 2))}" height="16" rx="3">'
                     f'<title>{escape(member.member_id)}: joined {joined:%H:%M:%S}'
                     f'{f", left {member.left_at:%H:%M:%S}" if member.left_at else ""} UTC'
                     f'</title></rect>')
        parts.extend(_flag_marks(history, x, y))
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))


def _flag_marks(history: MemberHistory, x: Any, y: int) -> list[str]:
    marks = []
    previous = (False, False)
    for change in history.changes:
        flags = (bool(change["mute"]), bool(change["hold"]))
        for index, (name, cls) in enumerate((("mute", "mark-mute"), ("hold", "mark-hold"))):
            if flags[index] != previous[index]:
                state = name if flags[index] else f"un{name}"
                marks.append(f'<g><title>{state} {change["time"]:%H:%M:%S} UTC</title>'
                             f'<rect class="{cls}" x="{_fmt(x(change["time"]) - 3)}" '
                             f'y="{y + (1 if index == 0 else 15)}" width="6" height="8"/></g>')
        previous = flags
    return marks
