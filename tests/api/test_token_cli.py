"""
lake token create / list / revoke as an operator runs them, against a real server.
"""

from __future__ import annotations

import json

import grpc
import pytest

from lake.v1 import lake_pb2, lake_pb2_grpc
from tests.api.conftest import auth, running_lake
from tests.api.test_cli_client import lake


async def test_token_create_list_revoke_end_to_end(lake_settings):
    """create prints a working token once; list shows it without the token; revoke
    stops it; a non-admin token may not manage tokens; status wants a token."""
    async with running_lake(lake_settings) as (server, _, channel):
        where = ["--address", server.address, "--token", "token-admin"]
        code, out, err = await lake(
            "token", "create", "--tenant", "acme", "--scope", "read",
            "--expires", "30d", "--note", "ci", *where,
        )  # fmt: skip
        assert code == 0, err
        token = out.splitlines()[0].removeprefix("token: ")
        token_id = out.split("id: ")[1].split()[0]
        assert "scope: read" in out
        spatial = lake_pb2_grpc.SpatialStub(channel)
        near = lake_pb2.NearestRequest(lon=0, lat=0)
        assert (await spatial.Nearest(near, metadata=auth(token))).matches == []

        code, out, err = await lake("token", "list", "--json", *where)
        assert code == 0, err
        [row] = json.loads(out)
        assert (row["id"], row["tenant"], row["scope"], row["note"]) == (
            token_id,
            "acme",
            "read",
            "ci",
        )
        assert row["expires_at"] != "-"
        assert token not in out
        code, out, err = await lake("token", "list", *where)
        assert token_id in out
        assert token not in out

        code, out, err = await lake("token", "revoke", token_id, *where)
        assert (code, out.strip()) == (0, f"revoked {token_id} (tenant acme)"), err
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await spatial.Nearest(near, metadata=auth(token))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        code, out, err = await lake("token", "list", "--json", *where)
        assert json.loads(out) == []
        code, out, err = await lake("token", "list", "--all", "--json", *where)
        assert json.loads(out)[0]["revoked_at"] != "-"

        code, _, err = await lake(
            "token", "list", "--address", server.address, "--token", "token-a"
        )
        assert code == 1
        assert "PERMISSION_DENIED" in err
        code, _, err = await lake(
            "token", "create", "--tenant", "acme", "--expires", "soon", *where
        )
        assert code == 2
        assert "--expires" in err
        code, _, err = await lake("status", "--address", server.address)
        assert code == 1
        assert "UNAUTHENTICATED" in err
