"""AuthService: protobuf in, Accounts calls, protobuf out."""

from google.protobuf import empty_pb2

from nbml.v1 import auth_service_pb2 as pb
from nbml.v1 import auth_service_pb2_grpc
from nbml_server.domain.accounts import Accounts, Tokens
from nbml_server.domain.names import parse_name
from nbml_server.platform.convert import timestamp
from nbml_server.platform.interceptors import current_caller


def user_message(user: dict) -> pb.User:
    return pb.User(name=f"users/{user['user_id']}", username=user["username"],
                   create_time=timestamp(user["create_time"]))


def tokens_message(tokens: Tokens) -> pb.Tokens:
    return pb.Tokens(access_token=tokens.access_token,
                     expires_in_seconds=tokens.expires_in_seconds,
                     refresh_token=tokens.refresh_token)


def api_key_message(key: dict) -> pb.ApiKey:
    return pb.ApiKey(name=f"apiKeys/{key['key_id']}", display_name=key["display_name"],
                     create_time=timestamp(key["create_time"]))


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    def __init__(self, accounts: Accounts):
        self.accounts = accounts

    def SignUp(self, request, context):
        user, tokens = self.accounts.sign_up(request.username, request.password)
        return pb.SignUpResponse(user=user_message(user), tokens=tokens_message(tokens))

    def LogIn(self, request, context):
        user, tokens = self.accounts.log_in(request.username, request.password)
        return pb.LogInResponse(user=user_message(user), tokens=tokens_message(tokens))

    def RefreshToken(self, request, context):
        return pb.RefreshTokenResponse(
            tokens=tokens_message(self.accounts.refresh(request.refresh_token)))

    def GetCurrentUser(self, request, context):
        return user_message(self.accounts.get_user(current_caller().user_id))

    def CreateApiKey(self, request, context):
        key, secret = self.accounts.create_api_key(current_caller(),
                                                   request.api_key.display_name)
        return pb.CreateApiKeyResponse(api_key=api_key_message(key), secret=secret)

    def ListApiKeys(self, request, context):
        page = self.accounts.list_api_keys(current_caller(), request.page_size,
                                           request.page_token)
        return pb.ListApiKeysResponse(api_keys=[api_key_message(k) for k in page.rows],
                                      next_page_token=page.next_page_token)

    def DeleteApiKey(self, request, context):
        self.accounts.delete_api_key(current_caller(),
                                     parse_name(request.name, "apiKeys", "name"))
        return empty_pb2.Empty()

    def ListActivities(self, request, context):
        page = self.accounts.list_activities(current_caller(), request.page_size,
                                             request.page_token)
        return pb.ListActivitiesResponse(
            activities=[pb.Activity(method=a["method"], resource=a["resource"],
                                    status=a["status"], time=timestamp(a["time"]),
                                    duration_ms=a["duration_ms"], request_id=a["request_id"])
                        for a in page.rows],
            next_page_token=page.next_page_token)
