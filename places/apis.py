"""The API of the review queue: propose an edit of a place, follow one's proposals.

Authenticated with a user's token (``Authorization: Token <key>``, ``places.api_auth``) or
the admin's session. A proposal needs the propose right in the place's dataset
(contributors, curators, admins); a user lists and reads only their own proposals.
Reviewing is done in the admin.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, mixins, serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from places.api_auth import ApiTokenAuthentication
from places.models import Place
from places.models_curation import PlaceProposal, ProposalStatus
from places.services.review import PROPOSABLE_FIELDS, proposal_create


class ProposalSerializer(serializers.ModelSerializer):
    proposer = serializers.CharField(source="proposer.username", read_only=True)
    reviewer = serializers.CharField(source="reviewer.username", read_only=True, default=None)
    applied_change = serializers.IntegerField(source="applied_change_id", read_only=True)

    class Meta:
        model = PlaceProposal
        fields = [
            "id",
            "place",
            "values",
            "base_values",
            "base_version",
            "comment",
            "status",
            "proposer",
            "reviewer",
            "review_comment",
            "created_at",
            "decided_at",
            "applied_change",
        ]
        read_only_fields = fields


class ProposalCreateSerializer(serializers.Serializer):
    place = serializers.IntegerField(help_text="The id of the place to change.")
    values = serializers.DictField(
        help_text="Proposed values by field: "
        + ", ".join(PROPOSABLE_FIELDS)
        + ". location and footprint as GeoJSON geometries, dates as YYYY-MM-DD."
    )
    comment = serializers.CharField(required=False, allow_blank=True, default="")


DETAIL = OpenApiResponse(
    response={"type": "object", "properties": {"detail": {"type": "string"}}},
    description="Not signed in (no or an unknown token): 401; not allowed: 403.",
)
FIELD_ERRORS = OpenApiResponse(
    response={"type": "object", "additionalProperties": {}},
    description="Bad input: the body names each field (or parameter) with its problem.",
)
STATUS = OpenApiParameter(
    "status", str, enum=ProposalStatus.values, description="Only proposals in this state."
)


class ProposalPagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


class ProposalApiBase(generics.GenericAPIView):
    authentication_classes = [ApiTokenAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]
    serializer_class = ProposalSerializer

    def get_queryset(self) -> Any:
        request = self.request
        queryset = PlaceProposal.objects.filter(proposer_id=request.user.pk).select_related(
            "proposer", "reviewer"
        )
        wanted = request.query_params.get("status")
        if wanted is not None:
            if wanted not in ProposalStatus.values:
                raise ValidationError(
                    {"status": f"one of {', '.join(ProposalStatus.values)}, not {wanted!r}"}
                )
            queryset = queryset.filter(status=wanted)
        return queryset.order_by("-id")


class ProposalListApi(mixins.ListModelMixin, ProposalApiBase):
    """Your own proposals, newest first (``?status=pending|approved|rejected``); POST
    proposes an edit of a place for review."""

    pagination_class = ProposalPagination

    @extend_schema(
        parameters=[STATUS],
        responses={200: ProposalSerializer(many=True), 400: FIELD_ERRORS, 401: DETAIL},
    )
    def get(self, request: Request) -> Response:
        return self.list(request)

    @extend_schema(
        request=ProposalCreateSerializer,
        responses={201: ProposalSerializer, 400: FIELD_ERRORS, 401: DETAIL, 403: DETAIL},
    )
    def post(self, request: Request) -> Response:
        given = ProposalCreateSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        place = Place.objects.filter(pk=given.validated_data["place"]).first()
        if place is None:
            raise ValidationError({"place": f"no place {given.validated_data['place']}"})
        try:
            proposal = proposal_create(
                place=place,
                user=request.user,
                values=given.validated_data["values"],
                comment=given.validated_data["comment"],
            )
        except DjangoPermissionDenied as exc:
            raise PermissionDenied(str(exc)) from exc
        except DjangoValidationError as exc:
            raise ValidationError(exc.message_dict) from exc
        return Response(ProposalSerializer(proposal).data, status=status.HTTP_201_CREATED)


class ProposalDetailApi(mixins.RetrieveModelMixin, ProposalApiBase):
    """One of your proposals: its status, reviewer and the reviewer's comment."""

    @extend_schema(
        parameters=[OpenApiParameter("pk", int, OpenApiParameter.PATH)],
        responses={200: ProposalSerializer, 401: DETAIL, 404: DETAIL},
    )
    def get(self, request: Request, pk: str) -> Response:
        if not pk.isdigit():
            raise NotFound(f"no proposal {pk!r}")
        return self.retrieve(request, pk=int(pk))
