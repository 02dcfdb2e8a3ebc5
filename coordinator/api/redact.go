package api

import (
	"context"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kiln-ci/kiln/internal/gitsrc"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Credentials in git URLs (https://user:token@host/...) are kept in the
// replicated state because agents need them to fetch, but no answer to a
// client carries them: every ControlService response, whatever its shape,
// is walked and each Source.git_url and Repo.url is passed through
// gitsrc.StripCredentials. The walk is one place, so a new RPC or field
// that returns a Source is covered without a change here. Messages from
// the state store are shared: a response that needs stripping is cloned
// first.

var (
	sourceType = (&kilnv1.Source{}).ProtoReflect().Descriptor()
	repoType   = (&kilnv1.Repo{}).ProtoReflect().Descriptor()
	urlFields  = map[protoreflect.FullName]protoreflect.FieldDescriptor{
		sourceType.FullName(): sourceType.Fields().ByName("git_url"),
		repoType.FullName():   repoType.Fields().ByName("url"),
	}
)

// reaches caches, per message type, whether it can contain a Source or
// Repo at any depth (log chunks cannot, so streaming logs costs nothing).
var reaches sync.Map // protoreflect.FullName → bool

func canReach(md protoreflect.MessageDescriptor) bool {
	if v, ok := reaches.Load(md.FullName()); ok {
		return v.(bool)
	}
	r := canReachFrom(md, map[protoreflect.FullName]bool{})
	reaches.Store(md.FullName(), r)
	return r
}

func canReachFrom(md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) bool {
	if _, ok := urlFields[md.FullName()]; ok {
		return true
	}
	if seen[md.FullName()] {
		return false
	}
	seen[md.FullName()] = true
	fields := md.Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		if f.IsMap() {
			f = f.MapValue()
		}
		if f.Message() != nil && canReachFrom(f.Message(), seen) {
			return true
		}
	}
	return false
}

// stripCredentials walks m; it reports whether a URL with credentials was
// found, and with apply set strips it in place.
func stripCredentials(m protoreflect.Message, apply bool) bool {
	md := m.Descriptor()
	if !canReach(md) {
		return false
	}
	found := false
	if f, ok := urlFields[md.FullName()]; ok {
		v := m.Get(f).String()
		if s := gitsrc.StripCredentials(v); s != v {
			found = true
			if apply {
				m.Set(f, protoreflect.ValueOfString(s))
			}
		}
	}
	m.Range(func(f protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case f.IsList() && f.Message() != nil:
			l := v.List()
			for i := range l.Len() {
				found = stripCredentials(l.Get(i).Message(), apply) || found
			}
		case f.IsMap() && f.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				found = stripCredentials(mv.Message(), apply) || found
				return true
			})
		case !f.IsList() && !f.IsMap() && f.Message() != nil:
			found = stripCredentials(v.Message(), apply) || found
		}
		return true
	})
	return found
}

// withoutCredentials returns resp, or a stripped copy when it carries a
// git URL with credentials.
func withoutCredentials(resp any) any {
	m, ok := resp.(proto.Message)
	if !ok || m == nil || !stripCredentials(m.ProtoReflect(), false) {
		return resp
	}
	c := proto.Clone(m)
	stripCredentials(c.ProtoReflect(), true)
	return c
}

// clientFacing reports the methods whose answers go to users.
func clientFacing(method string) bool {
	return strings.HasPrefix(method, "/kiln.v1.ControlService/")
}

// RedactUnary strips git URL credentials from client-facing answers.
func RedactUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err != nil || !clientFacing(info.FullMethod) {
		return resp, err
	}
	return withoutCredentials(resp), nil
}

// RedactStream strips git URL credentials from every message of a
// client-facing stream.
func RedactStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !clientFacing(info.FullMethod) {
		return handler(srv, ss)
	}
	return handler(srv, redactingStream{ss})
}

type redactingStream struct{ grpc.ServerStream }

func (s redactingStream) SendMsg(m any) error { return s.ServerStream.SendMsg(withoutCredentials(m)) }
