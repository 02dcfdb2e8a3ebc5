package acl

import "github.com/kiln-ci/kiln/internal/role"

// Rule is who may call one gRPC method.
type Rule struct {
	// Min is the lowest human role allowed (role.None: no human role).
	Min role.Role
	// Agent and Node also admit agent tokens and peer coordinators.
	Agent, Node bool
	// Public admits callers without any credential.
	Public bool
	// Audit records the call in the replicated audit log.
	Audit bool
}

// need describes the rule for messages: "role developer", "an agent token".
func (r Rule) need() string {
	switch {
	case r.Min != role.None:
		return "role " + r.Min.String()
	case r.Agent:
		return "role agent"
	default:
		return "a coordinator's cluster credential"
	}
}

// admits reports whether a principal of role have may call.
func (r Rule) admits(have role.Role) bool {
	switch {
	case have == role.Agent:
		return r.Agent
	case have == role.Node:
		return r.Node
	case r.Min == role.None:
		return false
	}
	return have.AtLeast(r.Min)
}

// Methods is the authorization table: every gRPC method the coordinator
// serves → who may call it. A method missing here is refused to everyone
// (fail closed); a test checks every registered method is listed.
var Methods = map[string]Rule{
	// ControlService: builds and repositories.
	"/kiln.v1.ControlService/SubmitBuild":    {Min: role.Developer, Audit: true},
	"/kiln.v1.ControlService/GetBuild":       {Min: role.Viewer},
	"/kiln.v1.ControlService/ListBuilds":     {Min: role.Viewer},
	"/kiln.v1.ControlService/WatchBuild":     {Min: role.Viewer},
	"/kiln.v1.ControlService/StreamLogs":     {Min: role.Viewer},
	"/kiln.v1.ControlService/CancelBuild":    {Min: role.Developer, Audit: true},
	"/kiln.v1.ControlService/ListAgents":     {Min: role.Viewer},
	"/kiln.v1.ControlService/DecideApproval": {Min: role.Approver, Audit: true},
	"/kiln.v1.ControlService/RetryBuild":     {Min: role.Developer, Audit: true},
	"/kiln.v1.ControlService/AddRepo":        {Min: role.Operator, Audit: true},
	"/kiln.v1.ControlService/ListRepos":      {Min: role.Viewer},
	"/kiln.v1.ControlService/ListArtifacts":  {Min: role.Viewer},
	"/kiln.v1.ControlService/ListTests":      {Min: role.Viewer},
	"/kiln.v1.ControlService/FlakyTests":     {Min: role.Viewer},

	// AgentService: a build agent's session.
	"/kiln.v1.AgentService/Connect": {Agent: true},

	// ClusterService: membership and the read index peers ask for.
	"/kiln.v1.ClusterService/Status":    {Min: role.Viewer, Node: true},
	"/kiln.v1.ClusterService/Join":      {Min: role.Admin, Node: true, Audit: true},
	"/kiln.v1.ClusterService/Leave":     {Min: role.Admin, Audit: true},
	"/kiln.v1.ClusterService/ReadIndex": {Node: true},

	// BlobService: uploads (kilnctl run --upload, agents' artifacts),
	// downloads, and copies between coordinators.
	"/kiln.v1.BlobService/Upload":    {Min: role.Developer, Agent: true},
	"/kiln.v1.BlobService/Download":  {Min: role.Viewer, Agent: true, Node: true},
	"/kiln.v1.BlobService/Replicate": {Node: true},

	// DeployService: deployment history (read) and rollback, which
	// starts a deployment like a submit does.
	"/kiln.v1.DeployService/ListDeployments": {Min: role.Viewer},
	"/kiln.v1.DeployService/Rollback":        {Min: role.Developer, Audit: true},

	// OpsService: the queue and delivery statistics (reads).
	"/kiln.v1.OpsService/ListQueue": {Min: role.Viewer},
	"/kiln.v1.OpsService/GetStats":  {Min: role.Viewer},

	// LogReplicationService: job log copies between coordinators.
	"/kiln.v1.LogReplicationService/AppendLog": {Node: true},
	"/kiln.v1.LogReplicationService/ReadLog":   {Node: true},

	// IdentityService: an agent's enrollment is authenticated by the
	// one-time join token it carries (redeemed through Raft), its renewal
	// by the agent certificate it renews (coordinator/authn, with TLS).
	"/kiln.v1.IdentityService/EnrollAgent": {Public: true, Audit: true},
	"/kiln.v1.IdentityService/RenewAgent":  {Public: true},

	// AccessService: tokens, secrets, audit.
	"/kiln.v1.AccessService/BootstrapToken": {Public: true, Audit: true},
	"/kiln.v1.AccessService/CreateToken":    {Min: role.Admin, Audit: true},
	"/kiln.v1.AccessService/ListTokens":     {Min: role.Admin},
	"/kiln.v1.AccessService/RevokeToken":    {Min: role.Admin, Audit: true},
	"/kiln.v1.AccessService/SetSecret":      {Min: role.Operator, Audit: true},
	"/kiln.v1.AccessService/ListSecrets":    {Min: role.Operator},
	"/kiln.v1.AccessService/DeleteSecret":   {Min: role.Operator, Audit: true},
	"/kiln.v1.AccessService/ListAudit":      {Min: role.Admin},
	"/kiln.v1.AccessService/WhoAmI":         {Min: role.Viewer, Agent: true},

	// Health checks answer load balancers and supervisors without a token;
	// reflection describes the API to viewers.
	"/grpc.health.v1.Health/Check":                                   {Public: true},
	"/grpc.health.v1.Health/Watch":                                   {Public: true},
	"/grpc.health.v1.Health/List":                                    {Public: true},
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      {Min: role.Viewer},
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": {Min: role.Viewer},
}
