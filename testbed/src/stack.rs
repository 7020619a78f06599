//! The project's CloudFormation stack (`cloudformation/kafka-cluster.yaml`) deployed on the
//! testbed as an operator deploys it, to prove the template and the agent keep one contract.
//!
//! The template's parameters are filled for the world (its VPC, subnets and AZs, the AMI every
//! testbed instance runs, the shared ZooKeeper, a fixed address per broker id); the stack is
//! created through moto's CloudFormation, which creates every resource whose type it creates
//! as the template says. The types it does not ([`NOT_BY_MOTO`]) the testbed creates itself,
//! from the template's own properties with the plain API, in dependency order, tagged as
//! CloudFormation tags what it creates (`aws:cloudformation:stack-name`, `stack-id`,
//! `logical-id`). The group then launches the brokers; their user data (the launch template's)
//! runs through [`crate::cloudinit`] on an image that bakes packer/'s own `agent-kafka.toml`
//! and starts the project's units, and each agent signals the stack's CreationPolicy.
//!
//! moto is given a copy of the template that differs in three ways, each a gap of moto or of
//! the testbed, and nothing else:
//! * each resource of a [`NOT_BY_MOTO`] type is a placeholder of type `KafkaTestbed::NotByMoto`
//!   (moto skips types it does not know) keeping its logical id, its `Condition` and its
//!   `CreationPolicy` (which the testbed's SignalResource counts against);
//! * a reference from a resource moto creates (or an output) to one the testbed creates later
//!   is resolved from that resource's own properties: `Ref` of a group is its
//!   `AutoScalingGroupName`, `GetAtt <ENI>.PrimaryPrivateIpAddress` its `PrivateIpAddress`
//!   (checked against the created resource afterwards); any other such reference fails;
//! * `CreationPolicy` is resolved to literals (`Count: !Ref BrokerCount`) before moto sees the
//!   placeholder (the testbed's CreateStack resolves intrinsics there too, through moto's
//!   `clean_json`; the literal keeps the placeholder self-contained).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::aws::REGION;
use crate::cloudinit::BootSpec;
use crate::cluster::{Broker, Deployed, Spec};
use crate::{Services, World};

/// The resource types of the template that moto's CloudFormation (moto 5.2) does not create as
/// the template says, found by creating the stack through it. The testbed creates them.
pub const NOT_BY_MOTO: &[&str] = &[
    // moto's model drops `Tags` (the tag contract: the agent finds an id's ENI by its tags)
    // and `GroupSet` (it reads a `SecurityGroups` property the type does not have).
    "AWS::EC2::NetworkInterface",
    // moto's model takes `Size` and `AvailabilityZone` only: `Tags` (the tag contract and the
    // `kafka-agent:volume = new` marker), `VolumeType`, `Iops`, `Throughput`, `Encrypted` and
    // `KmsKeyId` are dropped.
    "AWS::EC2::Volume",
    // moto's model drops `LifecycleHookSpecificationList` (the launch hook the agent
    // completes) and `InstanceMaintenancePolicy` (terminate first), and puts no
    // aws:cloudformation:* tags on the group (the brokers find the stack without them only
    // through user data); its parser fails on the `UpdatePolicy`'s `!FindInMap [Sizes, !Ref
    // BrokerCount, ...]` (moto makes a Number parameter an int, the mapping's keys are
    // strings); and the testbed's Auto Scaling service (hooks given at creation, an explicit
    // HealthCheckGracePeriod, health checks, the group's scope) models the
    // CreateAutoScalingGroup call, which moto's CloudFormation does not make.
    "AWS::AutoScaling::AutoScalingGroup",
];

// moto's CloudFormation drops more than that, where nothing on the testbed looks: an
// `AWS::Route53::HostedZone` is always public (its `VPCs` and `HostedZoneConfig` are dropped;
// the testbed serves no DNS, and the brokers' names are only compared, never resolved), and
// the instance role's policy is not enforced (moto evaluates no IAM policy; a host's
// credentials are its world's). Those types stay moto's.

/// The type moto is given for a resource the testbed creates: one it does not know, so it
/// skips it (logging "No Moto CloudFormation support").
const PLACEHOLDER: &str = "KafkaTestbed::NotByMoto";

/// The AMI every testbed instance runs (`World::launch`, `cluster.rs`).
pub const IMAGE_ID: &str = "ami-12c6146b";

/// The tag carrying an ENI's or a volume's broker id (the agent's default `[tags] id_key`).
const ID_TAG: &str = "kafka-agent:id";

/// `cloudformation/kafka-cluster.yaml`.
pub fn template_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../cloudformation/kafka-cluster.yaml"
    ))
}

/// The image's agent configuration, as packer/ bakes it.
fn packer_agent_toml() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packer/files/agent-kafka.toml"
    ))
}

/// What to deploy.
#[derive(Debug, Clone)]
pub struct StackSpec {
    /// The stack's name and its `ClusterName`.
    pub name: String,
    /// `ClaimBackend`: `zookeeper` or `cloudwatch-logs`.
    pub backend: String,
    /// `BrokerCount` (3 to 6).
    pub brokers: u32,
    /// `BootDeadlineSeconds`.
    pub deadline_seconds: u32,
    /// The agent and the stand-in broker, as the image installs them.
    pub agent: PathBuf,
    pub standin: PathBuf,
}

/// One resource of the stack.
#[derive(Debug, Clone)]
pub struct Resource {
    pub logical_id: String,
    pub kind: String,
    /// What `Ref` gives (moto gives an `AWS::EC2::SecurityGroupIngress` none).
    pub physical_id: Option<String>,
    /// Created by moto's CloudFormation, or by the testbed ([`NOT_BY_MOTO`]).
    pub by_moto: bool,
}

/// A deployed stack.
pub struct Stack {
    pub name: String,
    pub id: String,
    /// The parameters the stack was created with.
    pub parameters: BTreeMap<String, String>,
    /// Every resource whose condition holds, in the template's order.
    pub resources: Vec<Resource>,
    /// The cluster it runs, for the testbed's cluster helpers (serving, heal).
    pub cluster: Deployed,
}

/// What an agent found for its id, from its host's journal (`claim.json`, `attach.json`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub id: u32,
    pub instance: String,
    pub eni: String,
    pub volume: String,
}

/// Reads a CloudFormation YAML template (short-form tags included) as JSON, through the
/// venv's PyYAML (moto's dependency), as `scripts/lint-artifacts` reads it.
pub fn load(path: &Path) -> Result<Value> {
    use std::io::Write;
    const TO_JSON: &str = r#"
import json, sys, yaml
class Loader(yaml.SafeLoader):
    pass
def tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + suffix: value}
Loader.add_multi_constructor("!", tag)
json.dump(yaml.load(sys.stdin, Loader=Loader), sys.stdout, default=str)
"#;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let python = crate::aws::venv().join("bin/python");
    let mut child = std::process::Command::new(&python)
        .args(["-c", TO_JSON])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", python.display()))?;
    child.stdin.take().unwrap().write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} is not YAML: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{} as JSON", path.display()))
}

/// A resource made so far: what `Ref` gives and the attributes `GetAtt` may ask for.
#[derive(Debug, Clone, Default)]
struct Made {
    reference: String,
    attrs: BTreeMap<String, Value>,
}

/// CloudFormation's intrinsic functions over one template with its parameters, as far as the
/// project's templates use them. `None` is `AWS::NoValue` (dropped from lists and mappings).
struct Eval<'t> {
    t: &'t Value,
    params: BTreeMap<String, Value>,
    pseudo: BTreeMap<String, Value>,
    made: BTreeMap<String, Made>,
}

/// A value as text, as CloudFormation passes numbers and booleans to functions.
fn scalar(v: &Value) -> Result<String> {
    Ok(match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => bail!("{other} is not a single value"),
    })
}

fn no_value(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what} is AWS::NoValue")
}

impl<'t> Eval<'t> {
    fn new(t: &'t Value, given: &BTreeMap<String, String>) -> Result<Self> {
        let declared = t["Parameters"].as_object().cloned().unwrap_or_default();
        if let Some(unknown) = given.keys().find(|k| !declared.contains_key(*k)) {
            bail!("the template has no parameter {unknown}");
        }
        let mut params = BTreeMap::new();
        for (name, p) in &declared {
            let value = match (given.get(name), p.get("Default")) {
                (Some(v), _) => v.clone(),
                (None, Some(d)) => scalar(d)?,
                (None, None) => bail!("parameter {name} has no default and no value"),
            };
            let kind = p["Type"].as_str().unwrap_or("String");
            if let Some(allowed) = p["AllowedValues"].as_array() {
                let allowed: Vec<String> = allowed.iter().map(scalar).collect::<Result<_>>()?;
                if !allowed.contains(&value) {
                    bail!("parameter {name}={value:?} is not one of {allowed:?}");
                }
            }
            let v = if kind.starts_with("List<") || kind == "CommaDelimitedList" {
                Value::Array(
                    value
                        .split(',')
                        .map(|s| Value::String(s.trim().to_string()))
                        .collect(),
                )
            } else {
                Value::String(value)
            };
            params.insert(name.clone(), v);
        }
        let pseudo = [
            ("AWS::Region", json!(REGION)),
            ("AWS::Partition", json!("aws")),
            ("AWS::URLSuffix", json!("amazonaws.com")),
            ("AWS::NotificationARNs", json!([])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Eval {
            t,
            params,
            pseudo,
            made: BTreeMap::new(),
        })
    }

    fn resources(&self) -> Result<&'t Map<String, Value>> {
        self.t["Resources"]
            .as_object()
            .context("the template has no Resources")
    }

    fn resource(&self, id: &str) -> Result<&'t Value> {
        self.resources()?
            .get(id)
            .with_context(|| format!("the template has no resource {id}"))
    }

    fn kind(&self, id: &str) -> Result<&'t str> {
        self.resource(id)?["Type"]
            .as_str()
            .with_context(|| format!("resource {id} has no Type"))
    }

    /// Whether a named condition holds.
    fn holds(&self, name: &str) -> Result<bool> {
        let c = self.t["Conditions"]
            .get(name)
            .with_context(|| format!("the template has no condition {name}"))?;
        self.truth(c).with_context(|| format!("condition {name}"))
    }

    fn truth(&self, v: &Value) -> Result<bool> {
        match self.ev(v)? {
            Some(Value::Bool(b)) => Ok(b),
            other => bail!("{v} is not a condition (it gives {other:?})"),
        }
    }

    /// Whether a resource exists: its `Condition`, if any, holds.
    fn exists(&self, id: &str) -> Result<bool> {
        match self.resource(id)?.get("Condition").and_then(Value::as_str) {
            Some(c) => self.holds(c),
            None => Ok(true),
        }
    }

    fn is_resource(&self, name: &str) -> bool {
        self.t["Resources"].get(name).is_some()
    }

    fn reference(&self, name: &str) -> Result<Option<Value>> {
        if name == "AWS::NoValue" {
            return Ok(None);
        }
        if let Some(v) = self.pseudo.get(name).or_else(|| self.params.get(name)) {
            return Ok(Some(v.clone()));
        }
        if !self.is_resource(name) {
            bail!("Ref {name}: no such parameter, pseudo parameter or resource");
        }
        if !self.exists(name)? {
            bail!("Ref {name}: its condition is false");
        }
        match self.made.get(name) {
            Some(m) => Ok(Some(Value::String(m.reference.clone()))),
            None => bail!("Ref {name}: not created yet"),
        }
    }

    fn attribute(&self, name: &str, attr: &str) -> Result<Value> {
        self.made
            .get(name)
            .with_context(|| format!("GetAtt {name}.{attr}: {name} is not created yet"))?
            .attrs
            .get(attr)
            .cloned()
            .with_context(|| format!("GetAtt {name}.{attr}: the testbed does not know it"))
    }

    /// Evaluates `v`: its intrinsic functions applied, `AWS::NoValue` dropped.
    fn ev(&self, v: &Value) -> Result<Option<Value>> {
        match v {
            Value::Array(items) => {
                let mut out = Vec::new();
                for i in items {
                    if let Some(x) = self.ev(i)? {
                        out.push(x);
                    }
                }
                Ok(Some(Value::Array(out)))
            }
            Value::Object(o) if o.len() == 1 && o.keys().all(|k| is_function(k)) => {
                let (k, arg) = o.iter().next().unwrap();
                self.function(k, arg)
                    .with_context(|| format!("evaluating {k} {arg}"))
            }
            Value::Object(o) => {
                let mut out = Map::new();
                for (k, x) in o {
                    if let Some(x) = self.ev(x)? {
                        out.insert(k.clone(), x);
                    }
                }
                Ok(Some(Value::Object(out)))
            }
            other => Ok(Some(other.clone())),
        }
    }

    /// Evaluates `v` to a value, refusing `AWS::NoValue`.
    fn value(&self, v: &Value) -> Result<Value> {
        self.ev(v)?.ok_or_else(|| no_value(&v.to_string()))
    }

    fn text(&self, v: &Value) -> Result<String> {
        scalar(&self.value(v)?)
    }

    fn list(&self, v: &Value) -> Result<Vec<Value>> {
        match self.value(v)? {
            Value::Array(a) => Ok(a),
            other => bail!("{other} is not a list"),
        }
    }

    fn function(&self, k: &str, arg: &Value) -> Result<Option<Value>> {
        let args = || arg.as_array().with_context(|| format!("{k} takes a list"));
        Ok(Some(match k {
            "Ref" => return self.reference(arg.as_str().context("Ref takes a name")?),
            "Condition" => Value::Bool(self.holds(arg.as_str().context("a condition name")?)?),
            "Fn::GetAtt" => {
                let (name, attr) = get_att(arg)?;
                self.attribute(&name, &attr)?
            }
            "Fn::If" => {
                let a = args()?;
                let [c, yes, no] = a.as_slice() else {
                    bail!("Fn::If takes a condition and two values")
                };
                let c = c.as_str().context("Fn::If's condition is a name")?;
                return self.ev(if self.holds(c)? { yes } else { no });
            }
            "Fn::Equals" => {
                let a = args()?;
                let [x, y] = a.as_slice() else {
                    bail!("Fn::Equals takes two values")
                };
                Value::Bool(self.text(x)? == self.text(y)?)
            }
            "Fn::Not" => {
                let a = args()?;
                let [c] = a.as_slice() else {
                    bail!("Fn::Not takes one condition")
                };
                Value::Bool(!self.truth(c)?)
            }
            "Fn::And" | "Fn::Or" => {
                let mut truths = Vec::new();
                for c in args()? {
                    truths.push(self.truth(c)?);
                }
                Value::Bool(if k == "Fn::And" {
                    truths.iter().all(|t| *t)
                } else {
                    truths.iter().any(|t| *t)
                })
            }
            "Fn::Sub" => Value::String(match arg {
                Value::String(text) => self.sub(text, &Map::new())?,
                Value::Array(a) => match a.as_slice() {
                    [Value::String(text), Value::Object(vars)] => self.sub(text, vars)?,
                    _ => bail!("Fn::Sub takes a text, or a text and a mapping"),
                },
                _ => bail!("Fn::Sub takes a text, or a text and a mapping"),
            }),
            "Fn::Join" => {
                let a = args()?;
                let [sep, items] = a.as_slice() else {
                    bail!("Fn::Join takes a separator and a list")
                };
                let sep = sep.as_str().context("Fn::Join's separator is a text")?;
                let items: Vec<String> = self
                    .list(items)?
                    .iter()
                    .map(scalar)
                    .collect::<Result<_>>()?;
                Value::String(items.join(sep))
            }
            "Fn::Select" => {
                let a = args()?;
                let [i, items] = a.as_slice() else {
                    bail!("Fn::Select takes an index and a list")
                };
                let i: usize = self.text(i)?.parse().context("Fn::Select's index")?;
                let items = self.list(items)?;
                items
                    .get(i)
                    .cloned()
                    .with_context(|| format!("Fn::Select {i} of a list of {}", items.len()))?
            }
            "Fn::FindInMap" => {
                let a = args()?;
                let [m, k1, k2] = a.as_slice() else {
                    bail!("Fn::FindInMap takes a map and two keys")
                };
                let (m, k1, k2) = (self.text(m)?, self.text(k1)?, self.text(k2)?);
                self.t["Mappings"][&m][&k1]
                    .get(&k2)
                    .cloned()
                    .with_context(|| format!("Mappings {m} {k1} {k2} does not exist"))?
            }
            "Fn::Base64" => {
                Value::String(crate::cloudinit::base64_encode(self.text(arg)?.as_bytes()))
            }
            other => bail!("{other} is not modelled by the testbed's template evaluator"),
        }))
    }

    /// `Fn::Sub`: `${Name}` is a parameter, pseudo parameter, resource or one of `vars`,
    /// `${Name.Attr}` an attribute, `${!Text}` the literal `${Text}`.
    fn sub(&self, text: &str, vars: &Map<String, Value>) -> Result<String> {
        let mut out = String::new();
        for piece in placeholders(text)? {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Literal(t) => out.push_str(&format!("${{{t}}}")),
                Piece::Name(name) => {
                    let v = if let Some(v) = vars.get(name) {
                        self.value(v)?
                    } else if let Some((r, a)) = name.split_once('.') {
                        self.attribute(r, a)?
                    } else {
                        self.reference(name)?.ok_or_else(|| no_value(name))?
                    };
                    out.push_str(&scalar(&v).with_context(|| format!("${{{name}}}"))?);
                }
            }
        }
        Ok(out)
    }

    /// The resources `v` refers to (Ref, GetAtt, Sub), in the branches its conditions take.
    fn refs(&self, v: &Value, out: &mut BTreeSet<String>) -> Result<()> {
        match v {
            Value::Array(a) => {
                for x in a {
                    self.refs(x, out)?;
                }
            }
            Value::Object(o) if o.len() == 1 => {
                let (k, arg) = o.iter().next().unwrap();
                match k.as_str() {
                    "Ref" => {
                        if let Some(n) = arg.as_str().filter(|n| self.is_resource(n)) {
                            out.insert(n.to_string());
                        }
                    }
                    "Fn::GetAtt" => {
                        out.insert(get_att(arg)?.0);
                    }
                    "Fn::If" => {
                        if let Some([c, yes, no]) = arg.as_array().map(Vec::as_slice) {
                            let c = c.as_str().context("Fn::If's condition is a name")?;
                            self.refs(if self.holds(c)? { yes } else { no }, out)?;
                        }
                    }
                    "Fn::Sub" => {
                        let (text, vars) = match arg {
                            Value::Array(a) if a.len() == 2 => (&a[0], a[1].as_object()),
                            _ => (arg, None),
                        };
                        if let Some(vars) = vars {
                            for x in vars.values() {
                                self.refs(x, out)?;
                            }
                        }
                        for piece in placeholders(text.as_str().unwrap_or(""))? {
                            if let Piece::Name(name) = piece {
                                let r = name.split('.').next().unwrap_or(name);
                                let var = vars.is_some_and(|v| v.contains_key(name));
                                if !var && self.is_resource(r) {
                                    out.insert(r.to_string());
                                }
                            }
                        }
                    }
                    _ => self.refs(arg, out)?,
                }
            }
            Value::Object(o) => {
                for x in o.values() {
                    self.refs(x, out)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether a mapping's only key makes it an intrinsic function.
fn is_function(key: &str) -> bool {
    key == "Ref" || key == "Condition" || key.starts_with("Fn::")
}

fn get_att(arg: &Value) -> Result<(String, String)> {
    match arg {
        Value::String(s) => s.split_once('.').map(|(a, b)| (a.into(), b.into())),
        Value::Array(a) => match a.as_slice() {
            [Value::String(r), Value::String(at)] => Some((r.clone(), at.clone())),
            _ => None,
        },
        _ => None,
    }
    .with_context(|| format!("GetAtt {arg} is not a resource and an attribute"))
}

enum Piece<'a> {
    Text(&'a str),
    Literal(&'a str),
    Name(&'a str),
}

/// `Fn::Sub`'s text cut at its `${...}`.
fn placeholders(text: &str) -> Result<Vec<Piece<'_>>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push(Piece::Text(&rest[..i]));
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .with_context(|| format!("an unclosed ${{ in Fn::Sub {text:?}"))?;
        let name = &after[..end];
        out.push(match name.strip_prefix('!') {
            Some(lit) => Piece::Literal(lit),
            None => Piece::Name(name),
        });
        rest = &after[end + 1..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// A value moto's copy of the template was given for a resource the testbed creates later:
/// checked once it exists.
#[derive(Debug, Clone)]
struct Promise {
    logical_id: String,
    attr: Option<String>,
    value: String,
}

impl Eval<'_> {
    /// What a reference to a resource the testbed creates gives, from its own properties,
    /// before it exists.
    fn known_before(&self, id: &str, attr: Option<&str>) -> Result<String> {
        let props = &self.resource(id)?["Properties"];
        let v = match (self.kind(id)?, attr) {
            ("AWS::AutoScaling::AutoScalingGroup", None) => &props["AutoScalingGroupName"],
            ("AWS::EC2::NetworkInterface", Some("PrimaryPrivateIpAddress")) => {
                &props["PrivateIpAddress"]
            }
            (kind, _) => bail!(
                "a resource moto creates refers to {id}{} ({kind}), which the testbed creates \
                 only after the stack: not modelled",
                attr.map(|a| format!(".{a}")).unwrap_or_default()
            ),
        };
        self.text(v)
            .with_context(|| format!("{id}'s value before it exists"))
    }

    /// `v` of a resource moto creates, its references to `later` resolved (see the module's
    /// documentation), in the branches its conditions take.
    fn rewrite(
        &self,
        v: &Value,
        later: &BTreeSet<String>,
        promises: &mut Vec<Promise>,
    ) -> Result<Value> {
        let mut promise = |id: &str, attr: Option<&str>| -> Result<Value> {
            let value = self.known_before(id, attr)?;
            promises.push(Promise {
                logical_id: id.into(),
                attr: attr.map(str::to_string),
                value: value.clone(),
            });
            Ok(Value::String(value))
        };
        Ok(match v {
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|x| self.rewrite(x, later, promises))
                    .collect::<Result<_>>()?,
            ),
            Value::Object(o) if o.len() == 1 => {
                let (k, arg) = o.iter().next().unwrap();
                match k.as_str() {
                    "Ref" if arg.as_str().is_some_and(|n| later.contains(n)) => {
                        promise(arg.as_str().unwrap(), None)?
                    }
                    "Fn::GetAtt" if later.contains(&get_att(arg)?.0) => {
                        let (id, attr) = get_att(arg)?;
                        promise(&id, Some(&attr))?
                    }
                    "Fn::If" => match arg.as_array().map(Vec::as_slice) {
                        Some([c, yes, no]) => {
                            let name = c.as_str().context("Fn::If's condition is a name")?;
                            let (yes, no) = if self.holds(name)? {
                                (self.rewrite(yes, later, promises)?, no.clone())
                            } else {
                                (yes.clone(), self.rewrite(no, later, promises)?)
                            };
                            json!({"Fn::If": [c, yes, no]})
                        }
                        _ => bail!("Fn::If takes a condition and two values"),
                    },
                    "Fn::Sub" => {
                        let (text, vars) = match arg {
                            Value::Array(a) if a.len() == 2 => (&a[0], Some(&a[1])),
                            _ => (arg, None),
                        };
                        let mut out = String::new();
                        for piece in placeholders(text.as_str().context("Fn::Sub's text")?)? {
                            match piece {
                                Piece::Text(t) => out.push_str(t),
                                Piece::Literal(t) => out.push_str(&format!("${{!{t}}}")),
                                Piece::Name(name) => {
                                    let (r, a) = match name.split_once('.') {
                                        Some((r, a)) => (r, Some(a)),
                                        None => (name, None),
                                    };
                                    let var = vars.is_some_and(|v| v.get(name).is_some());
                                    if !var && later.contains(r) {
                                        out.push_str(&scalar(&promise(r, a)?)?);
                                    } else {
                                        out.push_str(&format!("${{{name}}}"));
                                    }
                                }
                            }
                        }
                        match vars {
                            Some(vars) => {
                                json!({"Fn::Sub": [out, self.rewrite(vars, later, promises)?]})
                            }
                            None => json!({"Fn::Sub": out}),
                        }
                    }
                    _ => json!({k: self.rewrite(arg, later, promises)?}),
                }
            }
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| Ok((k.clone(), self.rewrite(x, later, promises)?)))
                    .collect::<Result<_>>()?,
            ),
            other => other.clone(),
        })
    }

    /// The template moto is given (see the module's documentation), and the values it was
    /// promised for resources the testbed creates.
    fn moto_template(&self, later: &BTreeSet<String>) -> Result<(Value, Vec<Promise>)> {
        let mut t = self.t.clone();
        let mut promises = Vec::new();
        let mut resources = Map::new();
        for (id, r) in self.resources()? {
            let exists = self.exists(id)?;
            let mut r = if later.contains(id) {
                let mut p = Map::new();
                p.insert("Type".into(), json!(PLACEHOLDER));
                if let Some(c) = r.get("Condition") {
                    p.insert("Condition".into(), c.clone());
                }
                let note = format!("{}: created by the testbed (stack::NOT_BY_MOTO)", r["Type"]);
                p.insert("Metadata".into(), json!({ "kafka-testbed": note }));
                if let Some(cp) = r.get("CreationPolicy") {
                    p.insert("CreationPolicy".into(), cp.clone());
                }
                Value::Object(p)
            } else if exists {
                self.rewrite(r, later, &mut promises)
                    .with_context(|| format!("resource {id}"))?
            } else {
                r.clone()
            };
            if exists && let Some(cp) = r.get("CreationPolicy").cloned() {
                r["CreationPolicy"] = self
                    .value(&cp)
                    .with_context(|| format!("{id}'s CreationPolicy"))?;
            }
            resources.insert(id.clone(), r);
        }
        t["Resources"] = Value::Object(resources);
        if let Some(outputs) = self.t["Outputs"].as_object() {
            let mut out = Map::new();
            for (name, o) in outputs {
                let holds = match o.get("Condition").and_then(Value::as_str) {
                    Some(c) => self.holds(c)?,
                    None => true,
                };
                let o = if holds {
                    self.rewrite(o, later, &mut promises)
                        .with_context(|| format!("output {name}"))?
                } else {
                    o.clone()
                };
                out.insert(name.clone(), o);
            }
            t["Outputs"] = Value::Object(out);
        }
        Ok((t, promises))
    }
}

/// The evaluated properties of one resource, read by name; every property must be read.
struct Props {
    id: String,
    map: Map<String, Value>,
    read: BTreeSet<String>,
}

impl Props {
    fn get(&mut self, key: &str) -> Option<Value> {
        self.read.insert(key.to_string());
        self.map.get(key).cloned()
    }

    fn text(&mut self, key: &str) -> Result<Option<String>> {
        self.get(key).map(|v| scalar(&v)).transpose()
    }

    fn need(&mut self, key: &str) -> Result<String> {
        self.text(key)?
            .with_context(|| format!("{} has no {key}", self.id))
    }

    fn int(&mut self, key: &str) -> Result<Option<i32>> {
        self.text(key)?
            .map(|s| {
                s.parse()
                    .with_context(|| format!("{}'s {key} {s:?}", self.id))
            })
            .transpose()
    }

    fn texts(&mut self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a.iter().map(scalar).collect(),
            Some(other) => bail!("{}'s {key} is not a list: {other}", self.id),
        }
    }

    /// `Tags` as (key, value, PropagateAtLaunch).
    fn tags(&mut self) -> Result<Vec<(String, String, bool)>> {
        let Some(tags) = self.get("Tags") else {
            return Ok(Vec::new());
        };
        let tags = tags.as_array().context("Tags is a list")?;
        tags.iter()
            .map(|t| {
                Ok((
                    scalar(&t["Key"])?,
                    scalar(&t["Value"])?,
                    t.get("PropagateAtLaunch")
                        .map(scalar)
                        .transpose()?
                        .is_some_and(|p| p == "true"),
                ))
            })
            .collect()
    }

    /// Fails if the template gives a property the testbed did not read.
    fn done(&self) -> Result<()> {
        if let Some(k) = self.map.keys().find(|k| !self.read.contains(*k)) {
            bail!(
                "{} has property {k}, which the testbed does not create: model it in \
                 testbed/src/stack.rs",
                self.id
            );
        }
        Ok(())
    }
}

/// The clients the testbed creates resources with.
struct Clients {
    ec2: aws_sdk_ec2::Client,
    autoscaling: aws_sdk_autoscaling::Client,
    cfn: aws_sdk_cloudformation::Client,
}

/// Creates one resource of a [`NOT_BY_MOTO`] type from its evaluated properties, with the tags
/// CloudFormation puts on what it creates (`cfn_tags`).
async fn create(
    c: &Clients,
    id: &str,
    kind: &str,
    map: Map<String, Value>,
    cfn_tags: &[(String, String)],
) -> Result<Made> {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let mut p = Props {
        id: id.into(),
        map,
        read: BTreeSet::new(),
    };
    let ec2_tags = |kind: ResourceType, tags: Vec<(String, String, bool)>| {
        let mut spec = TagSpecification::builder().resource_type(kind);
        for (k, v) in tags
            .into_iter()
            .map(|(k, v, _)| (k, v))
            .chain(cfn_tags.iter().cloned())
        {
            spec = spec.tags(Tag::builder().key(k).value(v).build());
        }
        spec.build()
    };
    match kind {
        "AWS::EC2::Volume" => {
            let mut req = c
                .ec2
                .create_volume()
                .availability_zone(p.need("AvailabilityZone")?)
                .set_size(p.int("Size")?)
                .set_volume_type(p.text("VolumeType")?.map(|t| t.as_str().into()))
                .set_iops(p.int("Iops")?)
                .set_throughput(p.int("Throughput")?)
                .set_encrypted(p.text("Encrypted")?.map(|e| e == "true"))
                .set_kms_key_id(p.text("KmsKeyId")?);
            req = req.tag_specifications(ec2_tags(ResourceType::Volume, p.tags()?));
            p.done()?;
            let volume = req
                .send()
                .await
                .with_context(|| format!("CreateVolume for {id}"))?
                .volume_id
                .context("CreateVolume returned no id")?;
            Ok(Made {
                reference: volume.clone(),
                attrs: [("VolumeId".to_string(), json!(volume))].into(),
            })
        }
        "AWS::EC2::NetworkInterface" => {
            let req = c
                .ec2
                .create_network_interface()
                .subnet_id(p.need("SubnetId")?)
                .set_private_ip_address(p.text("PrivateIpAddress")?)
                .set_description(p.text("Description")?)
                .set_groups(Some(p.texts("GroupSet")?))
                .tag_specifications(ec2_tags(ResourceType::NetworkInterface, p.tags()?));
            p.done()?;
            let eni = req
                .send()
                .await
                .with_context(|| format!("CreateNetworkInterface for {id}"))?
                .network_interface
                .context("CreateNetworkInterface returned nothing")?;
            let eni_id = eni.network_interface_id.clone().unwrap_or_default();
            let secondary: Vec<String> = eni
                .private_ip_addresses()
                .iter()
                .filter(|a| a.primary != Some(true))
                .filter_map(|a| a.private_ip_address.clone())
                .collect();
            Ok(Made {
                reference: eni_id,
                attrs: [
                    (
                        "PrimaryPrivateIpAddress".to_string(),
                        json!(eni.private_ip_address.unwrap_or_default()),
                    ),
                    ("SecondaryPrivateIpAddresses".to_string(), json!(secondary)),
                ]
                .into(),
            })
        }
        "AWS::AutoScaling::AutoScalingGroup" => {
            use aws_sdk_autoscaling::types::{
                InstanceMaintenancePolicy, LaunchTemplateSpecification, LifecycleHookSpecification,
                Tag,
            };
            let name = p.need("AutoScalingGroupName")?;
            let lt = p.get("LaunchTemplate").context("LaunchTemplate")?;
            let lt = LaunchTemplateSpecification::builder()
                .set_launch_template_id(lt.get("LaunchTemplateId").map(scalar).transpose()?)
                .set_launch_template_name(lt.get("LaunchTemplateName").map(scalar).transpose()?)
                .set_version(lt.get("Version").map(scalar).transpose()?)
                .build();
            let mut req = c
                .autoscaling
                .create_auto_scaling_group()
                .auto_scaling_group_name(&name)
                .launch_template(lt)
                .set_min_size(p.int("MinSize")?)
                .set_max_size(p.int("MaxSize")?)
                .set_desired_capacity(p.int("DesiredCapacity")?)
                .vpc_zone_identifier(p.texts("VPCZoneIdentifier")?.join(","))
                .set_health_check_type(p.text("HealthCheckType")?)
                .set_health_check_grace_period(p.int("HealthCheckGracePeriod")?);
            if let Some(m) = p.get("InstanceMaintenancePolicy") {
                let pct = |k: &str| -> Result<Option<i32>> {
                    m.get(k).map(|v| Ok(scalar(v)?.parse()?)).transpose()
                };
                req = req.instance_maintenance_policy(
                    InstanceMaintenancePolicy::builder()
                        .set_min_healthy_percentage(pct("MinHealthyPercentage")?)
                        .set_max_healthy_percentage(pct("MaxHealthyPercentage")?)
                        .build(),
                );
            }
            for h in p
                .get("LifecycleHookSpecificationList")
                .and_then(|l| l.as_array().cloned())
                .unwrap_or_default()
            {
                let text = |k: &str| h.get(k).map(scalar).transpose();
                req = req.lifecycle_hook_specification_list(
                    LifecycleHookSpecification::builder()
                        .set_lifecycle_hook_name(text("LifecycleHookName")?)
                        .set_lifecycle_transition(text("LifecycleTransition")?)
                        .set_default_result(text("DefaultResult")?)
                        .set_heartbeat_timeout(
                            text("HeartbeatTimeout")?.map(|t| t.parse()).transpose()?,
                        )
                        .set_notification_target_arn(text("NotificationTargetARN")?)
                        .set_role_arn(text("RoleARN")?)
                        .build(),
                );
            }
            // CloudFormation's own tags on a group it creates reach its instances too.
            let cfn = cfn_tags.iter().map(|(k, v)| (k.clone(), v.clone(), true));
            for (k, v, propagate) in p.tags()?.into_iter().chain(cfn) {
                req = req.tags(
                    Tag::builder()
                        .resource_id(&name)
                        .resource_type("auto-scaling-group")
                        .key(k)
                        .value(v)
                        .propagate_at_launch(propagate)
                        .build(),
                );
            }
            p.done()?;
            req.send()
                .await
                .with_context(|| format!("CreateAutoScalingGroup for {id}"))?;
            Ok(Made {
                reference: name,
                attrs: BTreeMap::new(),
            })
        }
        other => bail!("{id}: the testbed does not create {other}"),
    }
}

/// The image: packer/'s agent configuration, a drop-in for what differs on a testbed host, and
/// the project's units in their systemd order.
fn image(spec: &StackSpec) -> Result<BootSpec> {
    let baked = std::fs::read_to_string(packer_agent_toml())
        .with_context(|| format!("reading {}", packer_agent_toml().display()))?;
    // A testbed host's root is a directory, and it has no kafka user or group.
    let host = "# kafka-testbed: this host's root is {host}, and it has no kafka group.\n\
        [paths]\nstate_dir = \"{host}/var/lib/kafka-agent\"\n\n\
        [storage]\ndata_dir = \"{host}/var/lib/kafka\"\nfstab = \"{host}/etc/fstab\"\n\
        sysfs_root = \"{host}/sys\"\ndev_root = \"{host}/dev\"\n\n\
        [kafka]\noutput = \"{host}/etc/kafka/server.properties\"\ngroup = \"root\"\n";
    Ok(BootSpec {
        baked: vec![
            ("/etc/kafka-agent/agent.toml".into(), baked),
            (
                "/etc/kafka-agent/config.d/05-testbed-host.toml".into(),
                host.into(),
            ),
        ],
        units: crate::cluster::units(&spec.agent, &spec.standin, true),
    })
}

/// The template's parameters for the world: its first three subnets and their AZs, broker id
/// i at `.10 + i/3` of `Subnets[i mod 3]`, ZooKeeper at the first subnet's gateway with the
/// cluster's chroot, a 1 GiB volume per id; the rest as the template's defaults.
fn parameters(
    world: &World,
    services: &Services,
    spec: &StackSpec,
) -> Result<BTreeMap<String, String>> {
    let subnets = world
        .subnets
        .get(..3)
        .context("the world needs three subnets")?;
    let addresses: Vec<String> = (0..spec.brokers as usize)
        .map(|i| {
            let s = &subnets[i % 3];
            let prefix = s.cidr.rsplit_once('.').map(|p| p.0).unwrap_or_default();
            format!("{prefix}.{}", 10 + i / 3)
        })
        .collect();
    let zk: Vec<String> = services
        .zookeeper
        .client_ports()
        .iter()
        .map(|p| format!("{}:{p}", subnets[0].gateway))
        .collect();
    let join = |f: fn(&crate::vpc::Subnet) -> &str| -> String {
        subnets.iter().map(f).collect::<Vec<_>>().join(",")
    };
    Ok([
        ("ClusterName", spec.name.clone()),
        ("BrokerCount", spec.brokers.to_string()),
        ("ImageId", IMAGE_ID.into()),
        (
            "ZooKeeperConnect",
            format!("{}/{}", zk.join(","), spec.name),
        ),
        ("ClaimBackend", spec.backend.clone()),
        ("VpcId", world.vpc_id.clone()),
        ("Subnets", join(|s| &s.id)),
        ("AvailabilityZones", join(|s| &s.az)),
        ("BrokerAddresses", addresses.join(",")),
        ("VolumeSize", "1".into()),
        ("BootDeadlineSeconds", spec.deadline_seconds.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect())
}

/// The `[kafka] advertised_host` the user data gives id `{id}`, if any.
fn advertised_host(user_data: &str) -> Option<String> {
    user_data.lines().find_map(|l| {
        let v = l.trim().strip_prefix("advertised_host")?.trim_start();
        let v = v.strip_prefix('=')?.trim();
        Some(v.trim_matches('"').to_string())
    })
}

/// Deploys the stack: moto's CloudFormation and the testbed create its resources, the group
/// launches the brokers on the world's image. Returns once the group exists; wait with
/// [`Deployed::wait_serving`] and [`Stack::wait_status`].
pub async fn deploy(world: &World, services: &Services, spec: StackSpec) -> Result<Stack> {
    let sdk = services.moto.sdk_config(&format!("{}-admin", world.id));
    let c = Clients {
        ec2: aws_sdk_ec2::Client::new(&sdk),
        autoscaling: aws_sdk_autoscaling::Client::new(&sdk),
        cfn: aws_sdk_cloudformation::Client::new(&sdk),
    };
    let template = load(&template_path())?;
    let given = parameters(world, services, &spec)?;
    let mut ev = Eval::new(&template, &given)?;
    ev.pseudo.insert("AWS::StackName".into(), json!(spec.name));

    // Which resources exist, and which of them the testbed creates.
    let mut existing = Vec::new();
    for id in ev.resources()?.keys() {
        if ev.exists(id)? {
            existing.push(id.clone());
        }
    }
    let later: BTreeSet<String> = ev
        .resources()?
        .keys()
        .filter(|id| ev.kind(id).is_ok_and(|k| NOT_BY_MOTO.contains(&k)))
        .cloned()
        .collect();
    let (moto_copy, promises) = ev.moto_template(&later)?;

    world.boot_with(image(&spec)?);
    let mut req = c
        .cfn
        .create_stack()
        .stack_name(&spec.name)
        .template_body(moto_copy.to_string())
        .capabilities(aws_sdk_cloudformation::types::Capability::CapabilityIam);
    for (k, v) in &given {
        req = req.parameters(
            aws_sdk_cloudformation::types::Parameter::builder()
                .parameter_key(k)
                .parameter_value(v)
                .build(),
        );
    }
    let stack_id = req
        .send()
        .await
        .context("CreateStack (moto's CloudFormation)")?
        .stack_id
        .context("CreateStack returned no stack id")?;
    let account = stack_id.split(':').nth(4).unwrap_or_default().to_string();
    ev.pseudo.insert("AWS::StackId".into(), json!(stack_id));
    ev.pseudo.insert("AWS::AccountId".into(), json!(account));

    // What moto made: every resource of a type it creates must be there.
    let listed = c
        .cfn
        .describe_stack_resources()
        .stack_name(&spec.name)
        .send()
        .await
        .context("DescribeStackResources")?;
    let mut by_moto: BTreeMap<String, Option<String>> = BTreeMap::new();
    for r in listed.stack_resources() {
        if let Some(id) = r.logical_resource_id() {
            by_moto.insert(id.to_string(), r.physical_resource_id().map(str::to_string));
        }
    }
    for id in existing.iter().filter(|id| !later.contains(*id)) {
        let Some(physical) = by_moto.get(id) else {
            bail!(
                "moto's CloudFormation did not create {id} ({}): if it cannot, add the type to \
                 stack::NOT_BY_MOTO with the reason",
                ev.kind(id)?
            );
        };
        let mut made = Made {
            reference: physical.clone().unwrap_or_default(),
            attrs: BTreeMap::new(),
        };
        if ev.kind(id)? == "AWS::EC2::LaunchTemplate" {
            let lt = c
                .ec2
                .describe_launch_templates()
                .launch_template_ids(&made.reference)
                .send()
                .await
                .with_context(|| format!("describing {id} ({})", made.reference))?;
            let lt = lt
                .launch_templates()
                .first()
                .context("no launch template")?;
            for (k, v) in [
                ("LatestVersionNumber", lt.latest_version_number),
                ("DefaultVersionNumber", lt.default_version_number),
            ] {
                made.attrs
                    .insert(k.into(), json!(v.unwrap_or_default().to_string()));
            }
        }
        ev.made.insert(id.clone(), made);
    }

    // The rest, in dependency order.
    let mut pending: Vec<String> = existing
        .iter()
        .filter(|id| later.contains(*id))
        .cloned()
        .collect();
    while !pending.is_empty() {
        let mut ready = None;
        let mut waits = Vec::new();
        for (n, id) in pending.iter().enumerate() {
            let r = ev.resource(id)?;
            let mut needs = BTreeSet::new();
            ev.refs(&r["Properties"], &mut needs)?;
            match &r["DependsOn"] {
                Value::String(d) => {
                    needs.insert(d.clone());
                }
                Value::Array(a) => {
                    needs.extend(a.iter().filter_map(|d| d.as_str().map(Into::into)))
                }
                _ => {}
            }
            needs.retain(|d| !ev.made.contains_key(d));
            if needs.is_empty() {
                ready = Some(n);
                break;
            }
            waits.push(format!("{id} waits for {needs:?}"));
        }
        let Some(n) = ready else {
            bail!(
                "the testbed cannot order its resources: {}",
                waits.join("; ")
            );
        };
        let id = pending.remove(n);
        let props = match ev.ev(&ev.resource(&id)?["Properties"])? {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let cfn_tags: Vec<(String, String)> = [
            ("aws:cloudformation:stack-name", spec.name.clone()),
            ("aws:cloudformation:stack-id", stack_id.clone()),
            ("aws:cloudformation:logical-id", id.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let made = create(&c, &id, ev.kind(&id)?, props, &cfn_tags).await?;
        ev.made.insert(id, made);
    }
    for p in &promises {
        let made = &ev.made[&p.logical_id];
        let actual = match &p.attr {
            None => made.reference.clone(),
            Some(a) => scalar(&ev.attribute(&p.logical_id, a)?)?,
        };
        if actual != p.value {
            bail!(
                "moto's copy of the template was given {:?} for {}{}, which is {actual:?}",
                p.value,
                p.logical_id,
                p.attr.as_ref().map(|a| format!(".{a}")).unwrap_or_default()
            );
        }
    }

    let resources: Vec<Resource> = existing
        .iter()
        .map(|id| Resource {
            logical_id: id.clone(),
            kind: ev.kind(id).unwrap_or_default().to_string(),
            physical_id: Some(ev.made[id].reference.clone()).filter(|r| !r.is_empty()),
            by_moto: !later.contains(id),
        })
        .collect();

    // The brokers, by the tag contract: an ENI and a volume per id.
    let mut user_data = String::new();
    for id in &existing {
        if ev.kind(id)? == "AWS::EC2::LaunchTemplate" {
            let ud = ev.text(&ev.resource(id)?["Properties"]["LaunchTemplateData"]["UserData"])?;
            let bytes = crate::cloudinit::base64(&ud).context("user data is not base64")?;
            user_data = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    let advertised = advertised_host(&user_data);
    let tagged_id = |id: &str| -> Result<Option<u32>> {
        let props = ev.value(&ev.resource(id)?["Properties"])?;
        let tags = props["Tags"].as_array().cloned().unwrap_or_default();
        tags.iter()
            .find(|t| t["Key"] == ID_TAG)
            .map(|t| Ok(scalar(&t["Value"])?.parse()?))
            .transpose()
    };
    let mut enis = BTreeMap::new();
    let mut volumes = BTreeMap::new();
    for r in &resources {
        let into = match r.kind.as_str() {
            "AWS::EC2::NetworkInterface" => &mut enis,
            "AWS::EC2::Volume" => &mut volumes,
            _ => continue,
        };
        if let Some(n) = tagged_id(&r.logical_id)? {
            into.insert(n, r.logical_id.clone());
        }
    }
    let mut brokers = Vec::new();
    for n in 0..spec.brokers {
        let eni = enis
            .get(&n)
            .with_context(|| format!("the stack has no ENI tagged {ID_TAG}={n}"))?;
        let volume = volumes
            .get(&n)
            .with_context(|| format!("the stack has no volume tagged {ID_TAG}={n}"))?;
        let ip = scalar(&ev.attribute(eni, "PrimaryPrivateIpAddress")?)?;
        let subnet = ev.text(&ev.resource(eni)?["Properties"]["SubnetId"])?;
        let az = world
            .subnets
            .iter()
            .find(|s| s.id == subnet)
            .with_context(|| format!("{eni}'s subnet {subnet} is not the world's"))?
            .az
            .trim_start_matches(REGION)
            .to_string();
        brokers.push(Broker {
            id: n,
            az,
            eni: ev.made[eni].reference.clone(),
            host: advertised
                .as_ref()
                .map(|a| a.replace("{id}", &n.to_string()))
                .unwrap_or_else(|| ip.clone()),
            ip,
            volume: ev.made[volume].reference.clone(),
        });
    }
    let group = resources
        .iter()
        .find(|r| r.kind == "AWS::AutoScaling::AutoScalingGroup")
        .and_then(|r| r.physical_id.clone())
        .context("the stack has no Auto Scaling group")?;
    let zk_connect = given["ZooKeeperConnect"].clone();
    let cluster = Deployed {
        spec: Spec {
            name: spec.name.clone(),
            backend: spec.backend.clone(),
            azs: brokers.iter().map(|b| b.az.clone()).collect(),
            agent: spec.agent.clone(),
            standin: spec.standin.clone(),
            deadline_seconds: spec.deadline_seconds,
            launch_before_terminate: false,
            termination_hook: false,
            watch: None,
            zookeeper: None,
        },
        group,
        stack: spec.name.clone(),
        brokers,
        zk_connect,
        zk_local: services.zookeeper.connect_string(),
        chroot: format!("/{}", spec.name),
        autoscaling: c.autoscaling,
        cfn: c.cfn,
    };
    Ok(Stack {
        name: spec.name,
        id: stack_id,
        parameters: given,
        resources,
        cluster,
    })
}

impl Stack {
    /// The physical ids of the stack's resources of one type.
    pub fn ids_of(&self, kind: &str) -> BTreeSet<String> {
        self.resources
            .iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| r.physical_id.clone())
            .collect()
    }

    /// Waits until the stack's status is `want` (e.g. CREATE_COMPLETE once every broker
    /// signalled); fails at once on a status that will not change into it.
    pub async fn wait_status(&self, want: &str, timeout: Duration) -> Result<()> {
        let until = Instant::now() + timeout;
        loop {
            let status = self.cluster.stack_status().await?;
            if status == want {
                return Ok(());
            }
            if status.ends_with("_FAILED") || Instant::now() > until {
                bail!("stack {} is {status}, not {want}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What each agent of the group found for its id (its claim and its attachments), from
    /// the journals on the group's hosts.
    pub async fn found(&self, world: &World) -> Result<Vec<Found>> {
        let mut out = Vec::new();
        for inst in self.cluster.instances().await?.keys() {
            let dir = world.host_dir(inst).join("var/lib/kafka-agent");
            let read = |name: &str| -> Result<Value> {
                let path = dir.join(name);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Ok(serde_json::from_str(&text)?)
            };
            let (claim, attach) = (read("claim.json")?, read("attach.json")?);
            out.push(Found {
                id: claim["id"].as_u64().context("claim.json has no id")? as u32,
                instance: inst.clone(),
                eni: attach["eni"]["id"].as_str().unwrap_or_default().into(),
                volume: attach["volume"]["id"].as_str().unwrap_or_default().into(),
            });
        }
        out.sort();
        Ok(out)
    }
}

/// The demo from the stack (`kafka-testbed demo --from-stack`): the cluster deployed from
/// `cloudformation/kafka-cluster.yaml`, the contract shown (the ENIs and volumes the stack
/// made are the ones the agents found, the CreationPolicy's signals), then broker 1 dies and
/// the group heals it.
#[tokio::main]
pub async fn demo(name: &str, backend: &str, hold: bool) -> Result<()> {
    let sibling = |bin: &str| -> Result<PathBuf> {
        let exe = std::env::current_exe()?;
        let path = exe.parent().context("this binary's directory")?.join(bin);
        if !path.exists() {
            bail!(
                "{} does not exist: build it (scripts/demo does)",
                path.display()
            );
        }
        Ok(path)
    };
    let (agent, standin) = (sibling("kafka-agent")?, sibling("kafka-standin")?);
    eprintln!("starting moto and a 3-member ZooKeeper ensemble...");
    let services = Services::start(3)?;
    let world = World::create(&services, &["a", "b", "c"]).await?;
    let started = Instant::now();
    let spec = StackSpec {
        name: name.into(),
        backend: backend.into(),
        brokers: 3,
        deadline_seconds: 300,
        agent: agent.clone(),
        standin,
    };
    let stack = deploy(&world, &services, spec).await?;
    let moto = stack.resources.iter().filter(|r| r.by_moto).count();
    println!(
        "stack {} from cloudformation/kafka-cluster.yaml: {moto} resources by moto's \
         CloudFormation, {} by the testbed (NOT_BY_MOTO: {})",
        stack.name,
        stack.resources.len() - moto,
        NOT_BY_MOTO.join(", ")
    );
    for r in &stack.resources {
        println!(
            "  {:<20} {:<36} {:<33} {}",
            r.logical_id,
            r.kind,
            r.physical_id.as_deref().unwrap_or("-"),
            if r.by_moto { "moto" } else { "testbed" }
        );
    }
    let cluster = &stack.cluster;
    cluster
        .wait_serving(&world, Duration::from_secs(180))
        .await?;
    stack
        .wait_status("CREATE_COMPLETE", Duration::from_secs(60))
        .await?;
    println!(
        "\nall 3 brokers serve, {:.1} s after CreateStack; stack {}",
        started.elapsed().as_secs_f64(),
        cluster.stack_status().await?
    );
    for s in services.moto.signals().await? {
        if s.stack_id == stack.id {
            println!(
                "  signal {} {} from {}",
                s.logical_resource_id, s.status, s.unique_id
            );
        }
    }
    let (enis, volumes) = (
        stack.ids_of("AWS::EC2::NetworkInterface"),
        stack.ids_of("AWS::EC2::Volume"),
    );
    for f in stack.found(&world).await? {
        println!(
            "  broker {} on {}: ENI {} ({}), volume {} ({})",
            f.id,
            f.instance,
            f.eni,
            if enis.contains(&f.eni) {
                "the stack's"
            } else {
                "NOT the stack's"
            },
            f.volume,
            if volumes.contains(&f.volume) {
                "the stack's"
            } else {
                "NOT the stack's"
            },
        );
    }

    let nodes: Vec<String> = stack
        .found(&world)
        .await?
        .into_iter()
        .map(|f| f.instance)
        .collect();
    let victim = &cluster.brokers[1];
    let addr = format!("{}:9092", victim.ip);
    let written: Vec<String> = (0..3).map(|n| format!("order-{n}")).collect();
    for text in &written {
        let answer =
            crate::cluster::ask_broker(&world, &nodes[0], &addr, &format!("APPEND orders {text}"))?;
        println!("  wrote {text} to broker 1: {}", answer.join(" "));
    }
    println!("\nbroker 1 dies (its instance is terminated); the group heals it:");
    let heal = cluster
        .terminate_and_follow(&world, &services.moto, 1, Duration::from_secs(180))
        .await?;
    for e in &heal.events {
        println!("  +{:>6.2} s  {}", e.at.as_secs_f64(), e.what);
    }
    let replacement = heal
        .replacement
        .context("the group launched no replacement")?;
    let registered = heal
        .registered_after
        .context("the replacement's broker never registered")?;
    println!(
        "\nhealed: broker 1 serves again as {} ({}) on {replacement}, {:.1} s after the terminate",
        victim.host,
        victim.ip,
        registered.as_secs_f64()
    );
    let read = crate::cluster::ask_broker(&world, &nodes[0], &addr, "READ orders")?;
    println!("  records on broker 1 now: {}", read.join(", "));
    if read != written {
        bail!("broker 1 came back without its records: {read:?}, wrote {written:?}");
    }
    let mut all_ok = true;
    for inst in cluster.instances().await?.keys() {
        let config = world.host_dir(inst).join("etc/kafka-agent/agent.toml");
        let mut cmd = world.command(inst, &agent.to_string_lossy())?;
        cmd.arg("--config").arg(config).arg("status");
        let out = tokio::process::Command::from(cmd).output().await?;
        let text = String::from_utf8_lossy(&out.stdout);
        println!(
            "  {inst}: kafka-agent status exit {}: {}",
            out.status.code().unwrap_or(-1),
            text.lines().next().unwrap_or("")
        );
        all_ok &= out.status.success();
    }
    if !all_ok {
        bail!("a node's status is not healthy");
    }
    println!("same id, same address, same records, the stack's ENI and volume; zero manual steps");
    if hold {
        println!("holding; Ctrl-C tears the world down");
        tokio::signal::ctrl_c().await?;
    }
    drop(stack);
    drop(world);
    drop(services);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Value {
        json!({
            "Parameters": {
                "Name": {"Type": "String"},
                "Count": {"Type": "Number", "Default": 3, "AllowedValues": [3, 4]},
                "Subnets": {"Type": "List<AWS::EC2::Subnet::Id>"},
                "Addresses": {"Type": "CommaDelimitedList", "Default": "10.0.1.10,10.0.2.10"}
            },
            "Mappings": {"Sizes": {"3": {"Min": 2}, "4": {"Min": 3}}},
            "Conditions": {
                "Has4": {"Fn::Equals": [{"Ref": "Count"}, 4]},
                "Not4": {"Fn::Not": [{"Condition": "Has4"}]}
            },
            "Resources": {
                "Sg": {"Type": "AWS::EC2::SecurityGroup", "Properties": {"GroupDescription": "x"}},
                "Eni0": {"Type": "AWS::EC2::NetworkInterface", "Properties": {
                    "SubnetId": {"Fn::Select": [0, {"Ref": "Subnets"}]},
                    "PrivateIpAddress": {"Fn::Select": [0, {"Ref": "Addresses"}]},
                    "GroupSet": [{"Ref": "Sg"}]}},
                "Eni3": {"Type": "AWS::EC2::NetworkInterface", "Condition": "Has4",
                    "Properties": {"SubnetId": "s", "PrivateIpAddress": "10.0.1.11"}},
                "Dns0": {"Type": "AWS::Route53::RecordSet", "Properties": {
                    "Name": {"Fn::Sub": "kafka-0.${Name}."},
                    "ResourceRecords": [{"Fn::GetAtt": ["Eni0", "PrimaryPrivateIpAddress"]}]}},
                "Group": {"Type": "AWS::AutoScaling::AutoScalingGroup",
                    "CreationPolicy": {"ResourceSignal": {"Count": {"Ref": "Count"}, "Timeout": "PT5M"}},
                    "Properties": {
                        "AutoScalingGroupName": {"Fn::Sub": "${Name}-kafka"},
                        "MinSize": {"Fn::FindInMap": ["Sizes", {"Ref": "Count"}, "Min"]},
                        "Tags": [{"Key": "enis", "Value": {"Fn::Join": [" ", [
                            {"Ref": "Eni0"},
                            {"Fn::If": ["Has4", {"Ref": "Eni3"}, {"Ref": "AWS::NoValue"}]}]]}}]}}
            },
            "Outputs": {"Group": {"Value": {"Ref": "Group"}}}
        })
    }

    fn given() -> BTreeMap<String, String> {
        [("Name", "orders"), ("Subnets", "subnet-a,subnet-b")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }

    #[test]
    fn parameters_conditions_and_functions_evaluate_as_cloudformation_does() {
        let t = template();
        let mut ev = Eval::new(&t, &given()).unwrap();
        assert!(!ev.holds("Has4").unwrap());
        assert!(ev.holds("Not4").unwrap());
        assert!(!ev.exists("Eni3").unwrap());
        // A Number parameter is text to functions: the mapping's keys are text.
        let min = &t["Resources"]["Group"]["Properties"]["MinSize"];
        assert_eq!(ev.value(min).unwrap(), json!(2));
        let eni = ev
            .value(&t["Resources"]["Eni0"]["Properties"]["SubnetId"])
            .unwrap();
        assert_eq!(eni, json!("subnet-a"));
        // Refs to resources need them made; AWS::NoValue leaves a list.
        let tags = &t["Resources"]["Group"]["Properties"]["Tags"];
        assert!(ev.value(tags).is_err());
        ev.made.insert(
            "Eni0".into(),
            Made {
                reference: "eni-1".into(),
                attrs: BTreeMap::new(),
            },
        );
        assert_eq!(
            ev.value(tags).unwrap(),
            json!([{"Key": "enis", "Value": "eni-1"}])
        );
        let sub = json!({"Fn::Sub": ["${A}-${Name}-${!Literal}", {"A": {"Ref": "Count"}}]});
        assert_eq!(ev.value(&sub).unwrap(), json!("3-orders-${Literal}"));
        let mut five = given();
        five.insert("Count".into(), "5".into());
        assert!(Eval::new(&t, &five).is_err());
        assert!(ev.value(&json!({"Fn::GetAZs": ""})).is_err());
    }

    #[test]
    fn references_follow_the_branches_the_conditions_take() {
        let t = template();
        let ev = Eval::new(&t, &given()).unwrap();
        let mut refs = BTreeSet::new();
        ev.refs(&t["Resources"]["Group"]["Properties"], &mut refs)
            .unwrap();
        assert_eq!(refs, ["Eni0".to_string()].into());
        let mut refs = BTreeSet::new();
        ev.refs(&t["Resources"]["Dns0"]["Properties"], &mut refs)
            .unwrap();
        assert_eq!(refs, ["Eni0".to_string()].into());
    }

    #[test]
    fn motos_copy_has_placeholders_and_the_values_promised_for_them() {
        let t = template();
        let ev = Eval::new(&t, &given()).unwrap();
        let later: BTreeSet<String> = ["Eni0", "Eni3", "Group"].map(String::from).into();
        let (copy, promises) = ev.moto_template(&later).unwrap();
        let r = &copy["Resources"];
        assert_eq!(r["Group"]["Type"], PLACEHOLDER);
        assert_eq!(r["Group"]["CreationPolicy"]["ResourceSignal"]["Count"], "3");
        assert!(r["Group"].get("Properties").is_none());
        assert_eq!(r["Eni3"]["Condition"], "Has4");
        assert_eq!(r["Sg"], t["Resources"]["Sg"]);
        assert_eq!(
            r["Dns0"]["Properties"]["ResourceRecords"],
            json!(["10.0.1.10"])
        );
        assert_eq!(
            r["Dns0"]["Properties"]["Name"],
            t["Resources"]["Dns0"]["Properties"]["Name"]
        );
        assert_eq!(copy["Outputs"]["Group"]["Value"], "orders-kafka");
        let promised: Vec<(String, Option<String>, String)> = promises
            .into_iter()
            .map(|p| (p.logical_id, p.attr, p.value))
            .collect();
        assert_eq!(
            promised,
            vec![
                (
                    "Eni0".into(),
                    Some("PrimaryPrivateIpAddress".into()),
                    "10.0.1.10".into()
                ),
                ("Group".into(), None, "orders-kafka".into()),
            ]
        );
        // A reference the testbed cannot promise is refused.
        let mut t = template();
        t["Resources"]["Dns0"]["Properties"]["Name"] = json!({"Ref": "Eni0"});
        let ev = Eval::new(&t, &given()).unwrap();
        assert!(ev.moto_template(&later).is_err());
    }

    #[test]
    fn the_projects_template_gives_moto_a_copy_it_can_take() {
        let t = load(&template_path()).unwrap();
        let given: BTreeMap<String, String> = [
            ("ClusterName", "orders"),
            ("ImageId", IMAGE_ID),
            ("ZooKeeperConnect", "10.0.1.1:2181/orders"),
            ("VpcId", "vpc-1"),
            ("Subnets", "subnet-a,subnet-b,subnet-c"),
            ("AvailabilityZones", "us-east-1a,us-east-1b,us-east-1c"),
            ("BrokerAddresses", "10.0.1.10,10.0.2.10,10.0.3.10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let ev = Eval::new(&t, &given).unwrap();
        let later: BTreeSet<String> = ev
            .resources()
            .unwrap()
            .keys()
            .filter(|id| NOT_BY_MOTO.contains(&ev.kind(id).unwrap()))
            .cloned()
            .collect();
        let (copy, promises) = ev.moto_template(&later).unwrap();
        for id in &later {
            assert_eq!(copy["Resources"][id]["Type"], PLACEHOLDER, "{id}");
        }
        let signal = &copy["Resources"]["Brokers"]["CreationPolicy"]["ResourceSignal"];
        assert_eq!(signal["Count"], "3");
        let mut promised: Vec<String> = promises
            .iter()
            .map(|p| {
                format!(
                    "{}.{}={}",
                    p.logical_id,
                    p.attr.as_deref().unwrap_or("Ref"),
                    p.value
                )
            })
            .collect();
        promised.dedup();
        assert_eq!(
            promised,
            [
                "Eni0.PrimaryPrivateIpAddress=10.0.1.10",
                "Eni1.PrimaryPrivateIpAddress=10.0.2.10",
                "Eni2.PrimaryPrivateIpAddress=10.0.3.10",
                "Brokers.Ref=orders-kafka",
            ]
        );
    }

    #[test]
    fn the_advertised_host_comes_from_the_user_data() {
        let ud = "#cloud-config\n  content: |\n      [kafka]\n      advertised_host = \"kafka-{id}.kafka.internal\"\n";
        assert_eq!(
            advertised_host(ud).as_deref(),
            Some("kafka-{id}.kafka.internal")
        );
        assert_eq!(advertised_host("[kafka]\nmode = \"zookeeper\"\n"), None);
    }
}
