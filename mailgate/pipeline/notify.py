"""Who is told of what: the notifications each kind of decision causes.

The rules of the support team in one place. The store's
:func:`~mailgate.db.outbox.queue_notification` then applies the safety rules every
notification obeys, whoever asked for it: nobody outside the ticket, never ourselves,
never a suppressed address.
"""

from __future__ import annotations

from mailgate.config import Config
from mailgate.models import NotificationKind
from mailgate.parser import InboundMessage
from mailgate.pipeline.commands import Change
from mailgate.pipeline.decision import Notify
from mailgate.pipeline.filters import is_ours
from mailgate.routing import UnusedPrefix


def participant_addresses(
    message: InboundMessage, requester: str, config: Config
) -> tuple[tuple[str, str], ...]:
    """To/Cc addresses of a mail that are neither ours, the requester nor agents."""
    seen: dict[str, str] = {}
    for address in (*message.to, *message.cc):
        email = address.email
        if (
            not email
            or email == requester
            or is_ours(email, config)
            or email in config.agents.addresses
        ):
            continue
        seen.setdefault(email, address.name)
    return tuple(seen.items())


def reply_audience(
    requester: str, participants: tuple[str, ...], changes: tuple[Change, ...]
) -> tuple[str, ...]:
    """Who an agent's public answer is for: the requester and the participants, as the
    answer's own ``#cc add``/``#cc remove`` leave them (whatever the order of the lines)."""
    added = tuple(c.value for c in changes if c.field == "cc_add")
    removed = {c.value for c in changes if c.field == "cc_remove"} - set(added)
    return tuple(e for e in dict.fromkeys((requester, *participants, *added)) if e not in removed)


def owners(assignee: str | None, config: Config) -> tuple[str, ...]:
    """Who hears of a customer's reply: the ticket's assignee while that is an agent, else
    the team (``[agents] notify``). An assignee no longer among the agents is nobody's
    owner: their replies must not go unread."""
    if assignee is not None and assignee in config.agents.addresses:
        return (assignee,)
    return config.agents.notified


def assigned(assignee: str | None, by: str, previous: str | None) -> tuple[Notify, ...]:
    """A ticket given to an agent by someone else: that agent hears of it. Taking a ticket
    oneself, or leaving it to nobody, tells nobody."""
    if assignee is None or assignee in (by, previous):
        return ()
    return (Notify(NotificationKind.TICKET_ASSIGNED, (assignee,), with_comment=True, by=by),)


def secret_warning(sender: str, secret: bool) -> tuple[Notify, ...]:
    """Credentials never travel in plain mail: ask the sender to use the secret link."""
    return (Notify(NotificationKind.SECRET_WARNING, (sender,)),) if secret else ()


def on_new_ticket(
    requester: str,
    organization: str | None,
    sender: str,
    acknowledge: bool,
    secret: bool,
    team: tuple[str, ...],
    unused_prefix: UnusedPrefix | None = None,
    paged: bool = False,
) -> tuple[Notify, ...]:
    """A new ticket: acknowledge it to the requester (saying so when the customer named in
    the subject was not used), tell the team (``[agents] notify``, one mail each, so a
    reply to it answers as that agent) and the organization's followers."""
    notify = []
    if acknowledge:
        notify.append(
            Notify(
                NotificationKind.TICKET_CREATED,
                (requester,),
                with_comment=True,
                unused_prefix=unused_prefix,
                paged=paged,
            )
        )
    if organization is not None:
        notify.append(
            Notify(
                NotificationKind.NEW_TICKET_FOLLOWER,
                followers=True,
                exclude=(requester,),
                with_comment=True,
            )
        )
    if team:
        notify.append(
            Notify(
                NotificationKind.AGENT_NEW_TICKET,
                team,
                each=True,
                exclude=(sender,),
                with_comment=True,
            )
        )
    return (*notify, *secret_warning(sender, secret))


def on_emergency(
    open_now: bool, paged: tuple[str, ...], sender: str, declared: bool
) -> tuple[Notify, ...]:
    """An emergency outside support hours pages ``[support] emergency_notify`` at once, one
    mail each (a reply answers as that agent); in hours the team is there and sees the
    ticket's priority. Listed first, so its outbox row is queued before the others."""
    if not declared or open_now or not paged:
        return ()
    return (
        Notify(NotificationKind.EMERGENCY, paged, each=True, exclude=(sender,), with_comment=True),
    )


def on_comment(
    sender: str,
    by_agent: bool,
    public: bool,
    auto_reply: bool,
    audience: tuple[str, ...],
    team: tuple[str, ...],
    errors: tuple[str, ...],
    secret: bool,
) -> tuple[Notify, ...]:
    """An agent's public answer goes to the requester and participants; a customer's
    reply goes to the team (``[agents] notify``); robots tell nobody. Refused commands are
    explained."""
    notify = []
    if by_agent and public:
        notify.append(Notify(NotificationKind.AGENT_REPLY, audience, with_comment=True))
    elif not by_agent and not auto_reply and team:
        # With credentials in it one mail each: each agent gets links of their own.
        notify.append(
            Notify(
                NotificationKind.CUSTOMER_REPLY,
                team,
                each=secret,
                exclude=(sender,),
                with_comment=True,
            )
        )
    if errors:
        notify.append(Notify(NotificationKind.COMMAND_ERROR, (sender,), errors=errors))
    return (*notify, *secret_warning(sender, secret))


def on_ticket_closed(requester: str) -> tuple[Notify, ...]:
    """A solved ticket closed by the clock: the requester hears that it is done."""
    return (Notify(NotificationKind.TICKET_CLOSED, (requester,)),)


def on_move(requester: str, old: str | None, new: str) -> tuple[Notify, ...]:
    """A ticket moved to another organization: its followers learn of a ticket now theirs.

    The mail shows the ticket's first public comment, what its followers would have seen
    had it been opened there (the store passes that comment; never an internal note).
    """
    return (
        Notify(
            NotificationKind.TICKET_MOVED,
            followers=True,
            exclude=(requester,),
            with_comment=True,
            moved=(old, new),
        ),
    )
