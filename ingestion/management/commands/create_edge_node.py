"""Register an edge node and print its key once:
``manage.py create_edge_node NAME --region CODE [--code-system SYSTEM] [--scopes ...]
[--expires-days N] [--new-key]``.

The key is printed alone on the last line (``KEY=$(... | tail -n 1)`` in a script); it is
stored only as a hash, so it cannot be shown again. An existing name is refused unless
``--new-key`` asks for another key for that node (a node that does not exist yet is then
created, so a setup script can always pass it).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from ingestion.edge.models import EdgeNode, KeyScope
from ingestion.edge.services.keys import EdgeNodeNameTaken, edge_key_create, edge_node_create
from places.models import Region


class Command(BaseCommand):
    help = (
        "Register an edge node serving a region (by its code) and print a new key for it, "
        "once. With --new-key, an existing node gets another key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The node's name (unique).")
        parser.add_argument(
            "--region",
            required=True,
            metavar="CODE",
            help="Code of the region whose places the node pulls, e.g. GBR or S12000033.",
        )
        parser.add_argument(
            "--code-system",
            metavar="SYSTEM",
            help="The code's system (ne-adm0-a3, gss …), when several regions share the code.",
        )
        parser.add_argument(
            "--scopes",
            nargs="+",
            choices=KeyScope.values,
            default=list(KeyScope.values),
            help="What the key may do (default: all).",
        )
        parser.add_argument(
            "--expires-days",
            type=int,
            metavar="N",
            help="The key expires after N days (default: never).",
        )
        parser.add_argument(
            "--new-key",
            action="store_true",
            help="If the node exists, make another key for it instead of refusing the name.",
        )
        parser.add_argument("--key-name", default="", help="What the key is for.")

    def handle(self, *args: Any, **options: Any) -> None:
        region = self._region(options["region"], options["code_system"])
        expires_at = None
        if options["expires_days"] is not None:
            if options["expires_days"] <= 0:
                raise CommandError("--expires-days must be a positive number of days")
            expires_at = timezone.now() + dt.timedelta(days=options["expires_days"])
        name = options["name"]
        with transaction.atomic():
            node = EdgeNode.objects.filter(name=name).first()
            if node is not None and not options["new_key"]:
                raise CommandError(
                    f"a node named {name!r} already exists; pass --new-key to make another "
                    "key for it"
                )
            if node is not None and node.region_id != region.pk:
                raise CommandError(
                    f"node {name!r} serves {node.region}, not {region}; change its region in "
                    "the admin"
                )
            created_node = node is None
            if node is None:
                try:
                    node = edge_node_create(name=name, region=region)
                except (EdgeNodeNameTaken, ValueError) as exc:
                    raise CommandError(str(exc)) from exc
            created = edge_key_create(
                node=node,
                scopes=options["scopes"],
                name=options["key_name"],
                expires_at=expires_at,
            )
        what = "created node" if created_node else "new key for node"
        expiry = created.key.expires_at.strftime("%Y-%m-%d") if created.key.expires_at else "never"
        self.stdout.write(
            f"{what} {node.name} (id {node.pk}) serving {region}; key {created.key.prefix} "
            f"scopes {', '.join(created.key.scopes)}, expires {expiry}. "
            "The key is shown this once:"
        )
        self.stdout.write(created.secret)

    def _region(self, code: str, code_system: str | None) -> Region:
        regions = Region.objects.filter(code=code)
        if code_system:
            regions = regions.filter(code_system=code_system)
        found = list(regions[:10])
        if not found:
            where = f" in code system {code_system!r}" if code_system else ""
            raise CommandError(f"no region with the code {code!r}{where}")
        if len(found) > 1:
            systems = ", ".join(sorted(r.code_system for r in found))
            raise CommandError(
                f"several regions have the code {code!r} ({systems}); choose one with --code-system"
            )
        return found[0]
