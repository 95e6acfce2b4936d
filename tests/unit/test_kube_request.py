"""Kubernetes request attributes (interceptor.policy.kube_request) against the cases of the API
server's own table tests (k8s.io/apiserver pkg/endpoints/request/requestinfo_test.go:
TestGetAPIRequestInfo, TestGetNonAPIRequestInfo, TestSelectorParsing), plus the query reading
of Go's net/url and the refusals where a reading could differ."""

from __future__ import annotations

import pytest

from interceptor.errors import ClientProtocolError
from interceptor.operations import KubeRequest
from interceptor.policy.kube_request import go_query, kube_request, parse_field_selector


def derive(method: str, url: str) -> KubeRequest:
    path, _, query = url.partition("?")
    return kube_request(method, path, go_query(query))


# method, url, verb, group, version, namespace, resource, subresource, name (upstream's table)
API_CASES = [
    ("GET", "/api/v1/namespaces", "list", "", "v1", "", "namespaces", "", ""),
    ("GET", "/api/v1/namespaces/other", "get", "", "v1", "other", "namespaces", "", "other"),
    ("GET", "/api/v1/namespaces/other/pods", "list", "", "v1", "other", "pods", "", ""),
    ("GET", "/api/v1/namespaces/other/pods/foo", "get", "", "v1", "other", "pods", "", "foo"),
    ("HEAD", "/api/v1/namespaces/other/pods/foo", "get", "", "v1", "other", "pods", "", "foo"),
    ("GET", "/api/v1/pods", "list", "", "v1", "", "pods", "", ""),
    ("HEAD", "/api/v1/pods", "list", "", "v1", "", "pods", "", ""),
    ("GET", "/api/v1/proxy/namespaces/other/pods/foo", "proxy", "", "v1", "other", "pods", "", "foo"),
    ("GET", "/api/v1/proxy/namespaces/other/pods/foo/subpath/not/a/subresource", "proxy", "", "v1", "other", "pods",
     "", "foo"),
    ("GET", "/api/v1/watch/pods", "watch", "", "v1", "", "pods", "", ""),
    ("GET", "/api/v1/pods?watch=true", "watch", "", "v1", "", "pods", "", ""),
    ("GET", "/api/v1/pods?watch=false", "list", "", "v1", "", "pods", "", ""),
    ("GET", "/api/v1/watch/namespaces/other/pods", "watch", "", "v1", "other", "pods", "", ""),
    ("GET", "/api/v1/namespaces/other/pods?watch=1", "watch", "", "v1", "other", "pods", "", ""),
    ("GET", "/api/v1/namespaces/other/pods?watch=0", "list", "", "v1", "other", "pods", "", ""),
    ("GET", "/api/v1/namespaces/other/pods/foo/status", "get", "", "v1", "other", "pods", "status", "foo"),
    # a connect subresource is `create` whatever the method (upstream's table has `get` here)
    ("GET", "/api/v1/namespaces/other/pods/foo/proxy/subpath", "create", "", "v1", "other", "pods", "proxy", "foo"),
    ("PUT", "/api/v1/namespaces/other/finalize", "update", "", "v1", "other", "namespaces", "finalize", "other"),
    ("PUT", "/api/v1/namespaces/other/status", "update", "", "v1", "other", "namespaces", "status", "other"),
    ("PATCH", "/api/v1/namespaces/other/pods/foo", "patch", "", "v1", "other", "pods", "", "foo"),
    ("DELETE", "/api/v1/namespaces/other/pods/foo", "delete", "", "v1", "other", "pods", "", "foo"),
    ("POST", "/api/v1/namespaces/other/pods", "create", "", "v1", "other", "pods", "", ""),
    ("DELETE", "/api/v1/nodes", "deletecollection", "", "v1", "", "nodes", "", ""),
    ("DELETE", "/api/v1/namespaces", "deletecollection", "", "v1", "", "namespaces", "", ""),
    ("DELETE", "/api/v1/namespaces/other/pods", "deletecollection", "", "v1", "other", "pods", "", ""),
    ("DELETE", "/apis/extensions/v1/namespaces/other/pods", "deletecollection", "extensions", "v1", "other", "pods",
     "", ""),
    ("POST", "/apis/extensions/v1/namespaces/other/pods", "create", "extensions", "v1", "other", "pods", "", ""),
    ("POST", "/apis/extensions/v1beta3/namespaces/other/pods", "create", "extensions", "v1beta3", "other", "pods",
     "", ""),
    # beyond upstream's table: the subresources policies name, and the trailing slash Go trims
    ("POST", "/api/v1/namespaces/prod/pods/web/exec?command=ls", "create", "", "v1", "prod", "pods", "exec", "web"),
    ("GET", "/api/v1/namespaces/prod/pods/web/exec?command=sh", "create", "", "v1", "prod", "pods", "exec", "web"),
    ("GET", "/api/v1/namespaces/prod/pods/web/attach?stdin=true", "create", "", "v1", "prod", "pods", "attach", "web"),
    ("GET", "/api/v1/namespaces/prod/pods/web/portforward", "create", "", "v1", "prod", "pods", "portforward", "web"),
    ("HEAD", "/api/v1/namespaces/prod/pods/web/proxy/", "create", "", "v1", "prod", "pods", "proxy", "web"),
    ("DELETE", "/api/v1/namespaces/prod/services/web/proxy/x", "create", "", "v1", "prod", "services", "proxy",
     "web"),
    ("GET", "/api/v1/nodes/n1/proxy/exec/dev/web/app", "create", "", "v1", "", "nodes", "proxy", "n1"),
    ("PUT", "/api/v1/nodes/n1/proxy/configz", "create", "", "v1", "", "nodes", "proxy", "n1"),
    ("GET", "/apis/example.io/v1/namespaces/prod/pods/web/exec", "get", "example.io", "v1", "prod", "pods", "exec",
     "web"),  # connecters are the core group's
    ("GET", "/api/v1/namespaces/prod/services/web", "get", "", "v1", "prod", "services", "", "web"),
    ("POST", "/api/v1/namespaces/prod/pods/web/attach", "create", "", "v1", "prod", "pods", "attach", "web"),
    ("POST", "/api/v1/namespaces/prod/pods/web/portforward", "create", "", "v1", "prod", "pods", "portforward", "web"),
    ("GET", "/api/v1/namespaces/prod/pods/web/log?follow=true", "get", "", "v1", "prod", "pods", "log", "web"),
    ("PUT", "/apis/apps/v1/namespaces/prod/deployments/web/scale", "update", "apps", "v1", "prod", "deployments",
     "scale", "web"),
    ("GET", "/api/v1/namespaces/prod/secrets/", "list", "", "v1", "prod", "secrets", "", ""),
]


@pytest.mark.parametrize(("method", "url", "verb", "group", "version", "namespace", "resource", "subresource", "name"),
                         API_CASES)
def test_resource_requests(method: str, url: str, verb: str, group: str, version: str, namespace: str,
                           resource: str, subresource: str, name: str) -> None:
    got = derive(method, url)
    assert got.resource_request
    assert (got.verb, got.api_group, got.api_version, got.namespace, got.resource, got.subresource, got.name) == (
        verb, group, version, namespace, resource, subresource, name)
    assert got.path == url.partition("?")[0]


@pytest.mark.parametrize(("url", "resource_request"), [
    ("/api/version/resource", True),
    ("/apis/group/version/resource/name/subresource", True),
    ("/api/version/resource/name/subresource", True),
    ("/apis/batch/v1/job", True),
    ("/apis/batch/v1/job/foo", True),
    ("/apis/batch/v1/job/foo/scale", True),
    ("/not-api/version/resource", False),
    ("/apis/extensions/v1beta1", False),
    ("/apis/extensions/v1beta1/", False),
    ("/api/version", False),
    ("/api", False),
    ("/", False),
    ("/api/version/", False),
    ("/apis/group/version/", False),
    ("/badprefix/version/resource", False),
    ("/apis/version/resource", False),
])
def test_resource_or_not(url: str, resource_request: bool) -> None:
    assert derive("GET", url).resource_request is resource_request


def test_non_resource_requests_keep_the_method_and_path() -> None:
    got = derive("POST", "/healthz/ready")
    assert got == KubeRequest("post", "/healthz/ready", resource_request=False)
    assert got.summary() == {"kind": "kubernetes", "verb": "post", "path": "/healthz/ready"}


# name, method, url, name, verb, field selector, label selector (upstream's TestSelectorParsing)
SELECTOR_CASES = [
    ("no selector", "GET", "/apis/group/version/resource", "", "list", "", ""),
    ("metadata.name selector", "GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1", "name1",
     "list", "metadata.name=name1", ""),
    ("metadata.name selector with watch", "GET",
     "/apis/group/version/resource?watch=true&fieldSelector=metadata.name=name1", "name1", "watch",
     "metadata.name=name1", ""),
    ("random selector", "GET", "/apis/group/version/resource?fieldSelector=foo=bar&labelSelector=baz=qux", "", "list",
     "foo=bar", "baz=qux"),
    ("invalid selector with metadata.name", "GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo",
     "", "list", "metadata.name=name1,foo", ""),
    ("invalid selector with metadata.name with watch", "GET",
     "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=true", "", "watch",
     "metadata.name=name1,foo", ""),
    ("invalid selector with metadata.name with watch false", "GET",
     "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=false", "", "list",
     "metadata.name=name1,foo", ""),
    ("selector on deletecollection is honored", "DELETE",
     "/apis/group/version/resource?fieldSelector=foo=bar&labelSelector=baz=qux", "", "deletecollection", "foo=bar",
     "baz=qux"),
    ("selector on repeated param matches parsed param", "GET",
     "/apis/group/version/resource?fieldSelector=metadata.name=foo&fieldSelector=metadata.name=bar"
     "&labelSelector=foo=bar&labelSelector=foo=baz", "foo", "list", "metadata.name=foo", "foo=bar"),
    ("selector on other verb is ignored", "GET",
     "/apis/group/version/resource/name?fieldSelector=foo=bar&labelSelector=foo=bar", "name", "get", "", ""),
    ("selector on deprecated root type watch is not parsed", "GET",
     "/apis/group/version/watch/resource?fieldSelector=metadata.name=foo&labelSelector=foo=bar", "", "watch", "", ""),
    ("selector on deprecated root item watch is not parsed", "GET",
     "/apis/group/version/watch/resource/name?fieldSelector=metadata.name=foo&labelSelector=foo=bar", "name",
     "watch", "", ""),
    # beyond upstream's table
    ("double equals", "GET", "/api/v1/secrets?fieldSelector=metadata.name%3D%3Ddb", "db", "list",
     "metadata.name==db", ""),
    ("not equals names nothing", "GET", "/api/v1/secrets?fieldSelector=metadata.name!%3Ddb", "", "list",
     "metadata.name!=db", ""),
    ("terms are sorted before the first is taken", "GET",
     "/api/v1/secrets?fieldSelector=metadata.name%3Db,metadata.name%3Da", "a", "list",
     "metadata.name=b,metadata.name=a", ""),
    ("escaped value", "GET", "/api/v1/secrets?fieldSelector=metadata.name%3Da%5C%2Cb", "a,b", "list",
     "metadata.name=a\\,b", ""),
    ("a name that is not a path segment is ignored", "GET", "/api/v1/secrets?fieldSelector=metadata.name%3D..",
     "", "list", "metadata.name=..", ""),
    ("empty watch value watches", "GET", "/api/v1/pods?watch=", "", "watch", "", ""),
    ("watch FALSE lists", "GET", "/api/v1/pods?watch=FALSE", "", "list", "", ""),
]


@pytest.mark.parametrize(("case", "method", "url", "name", "verb", "field", "label"), SELECTOR_CASES,
                         ids=[c[0] for c in SELECTOR_CASES])
def test_selectors(case: str, method: str, url: str, name: str, verb: str, field: str, label: str) -> None:
    got = derive(method, url)
    assert (got.name, got.verb, got.field_selector, got.label_selector) == (name, verb, field, label)


def test_exec_command_and_dry_run() -> None:
    got = derive("POST", "/api/v1/namespaces/prod/pods/web/exec?command=sh&command=-c&command=rm+-rf+%2F&stdout=true")
    assert got.command == ("sh", "-c", "rm -rf /")
    assert not derive("POST", "/api/v1/namespaces/prod/pods/web/attach?command=x").command
    assert derive("DELETE", "/api/v1/namespaces/prod/pods/web?dryRun=All").dry_run
    assert not derive("DELETE", "/api/v1/namespaces/prod/pods/web").dry_run
    summary = derive("POST", "/api/v1/namespaces/prod/pods/web/exec?command=ls&dryRun=All").summary()
    assert summary == {"kind": "kubernetes", "verb": "create", "api_version": "v1", "resource": "pods",
                       "subresource": "exec", "namespace": "prod", "name": "web", "dry_run": True, "command": ["ls"]}


def test_go_query_reading() -> None:
    assert go_query("a=1&b=x+y&c=%41&d") == (("a", "1"), ("b", "x y"), ("c", "A"), ("d", ""))
    assert go_query("watch=1;x&watch=0") == (("watch", "0"),)  # a pair with ';' is skipped
    assert go_query("watch=%zz&watch=0") == (("watch", "0"),)  # a bad escape too
    assert go_query("&&a=1&") == (("a", "1"),)
    assert derive("GET", "/api/v1/pods?watch=1;&watch=false").verb == "list"


def test_field_selector_parsing() -> None:
    assert parse_field_selector("b=2,a==1,c!=3") == [("a", "==", "1"), ("b", "=", "2"), ("c", "!=", "3")]
    assert parse_field_selector("") == []
    assert parse_field_selector("a") is None
    assert parse_field_selector("a=b=c") is None
    assert parse_field_selector("a=b\\") is None
    assert parse_field_selector("a=b\\x") is None


@pytest.mark.parametrize(("method", "url", "why"), [
    ("GET", "/api/v1/namespaces/dev/pods/../../prod/secrets/x", "dot segments"),
    ("GET", "/api/v1/namespaces/dev/./pods", "dot segments"),
    ("GET", "/api/v1//pods", "empty"),
    ("GET", "//version", "empty"),  # /version to a server that merges slashes
    ("GET", "/version//", "empty"),
    ("GET", "//api/v1/namespaces/prod/secrets", "empty"),
    ("GET", "//", "empty"),
    ("GET", "api/v1/pods", "empty or dot"),
    ("OPTIONS", "/api/v1/pods", "method OPTIONS"),
    ("GET", "/api/v1/watch", "cannot tell the resource"),
    ("GET", "/api/v1/pods?watch=fal%C5%BFe", "ASCII"),
    ("GET", "/api/v1/pods?watch=%FF", "UTF-8"),
    ("GET", "/api/v1/secrets?fieldSelector=metadata.name%3Ddb&limit=ten", "limit='ten'"),
    ("GET", "/api/v1/secrets?fieldSelector=metadata.name%3Ddb&timeoutSeconds=1.5", "timeoutSeconds"),
])
def test_refused_where_the_server_could_read_otherwise(method: str, url: str, why: str) -> None:
    with pytest.raises(ClientProtocolError, match=why):
        derive(method, url)


def test_integer_options_are_checked_only_when_they_change_the_name() -> None:
    assert derive("GET", "/api/v1/secrets?limit=ten").verb == "list"
    assert derive("GET", "/api/v1/secrets?fieldSelector=metadata.name%3Ddb&limit=%2B500").name == "db"
